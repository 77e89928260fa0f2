// Command validate checks rendered Kubernetes manifests offline (no cluster, no schema
// download): every document is strictly decoded into the typed k8s.io/api structs (an
// unknown or misspelt field, a wrong type or a bad quantity is an error), then checked
// against a few of the API server's own rules (names, labels, ports, selectors, references
// between the documents). It prints the documents as a JSON array for further checks.
//
//	helm template presence deploy/helm/presence | validate > rendered.json
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

type doc struct {
	kind, name string
	obj        any
}

func main() {
	docs, generic, err := decodeAll(os.Stdin)
	if err == nil {
		err = check(docs)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "invalid:", err)
		os.Exit(1)
	}
	out, _ := json.Marshal(generic)
	os.Stdout.Write(append(out, '\n'))
}

func decodeAll(r io.Reader) ([]doc, []any, error) {
	reader := utilyaml.NewYAMLReader(bufio.NewReader(r))
	var docs []doc
	var generic []any
	for {
		raw, err := reader.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, nil, err
		}
		if len(bytes.TrimSpace(stripComments(raw))) == 0 {
			continue
		}
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal(raw, &meta); err != nil {
			return nil, nil, fmt.Errorf("not YAML: %w", err)
		}
		var obj any
		switch meta.APIVersion + "/" + meta.Kind {
		case "v1/ConfigMap":
			obj = &corev1.ConfigMap{}
		case "v1/Secret":
			obj = &corev1.Secret{}
		case "v1/Service":
			obj = &corev1.Service{}
		case "apps/v1/StatefulSet":
			obj = &appsv1.StatefulSet{}
		case "apps/v1/Deployment":
			obj = &appsv1.Deployment{}
		default:
			return nil, nil, fmt.Errorf("unexpected kind %q of apiVersion %q", meta.Kind, meta.APIVersion)
		}
		if err := yaml.UnmarshalStrict(raw, obj); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", meta.Kind, err)
		}
		var g any
		if err := yaml.Unmarshal(raw, &g); err != nil {
			return nil, nil, err
		}
		name := g.(map[string]any)["metadata"].(map[string]any)["name"]
		docs = append(docs, doc{meta.Kind, fmt.Sprint(name), obj})
		generic = append(generic, g)
	}
	if len(docs) == 0 {
		return nil, nil, errors.New("no documents")
	}
	return docs, generic, nil
}

func stripComments(raw []byte) []byte {
	var keep []string
	for _, line := range strings.Split(string(raw), "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			keep = append(keep, line)
		}
	}
	return []byte(strings.Join(keep, "\n"))
}

type problems []string

func (p *problems) add(where string, errs ...string) {
	for _, e := range errs {
		*p = append(*p, where+": "+e)
	}
}

func check(docs []doc) error {
	var p problems
	names := map[string]bool{}
	for _, d := range docs {
		key := d.kind + "/" + d.name
		if names[key] {
			p.add(key, "defined twice")
		}
		names[key] = true
	}
	for _, d := range docs {
		where := d.kind + "/" + d.name
		switch o := d.obj.(type) {
		case *corev1.ConfigMap:
			checkMeta(&p, where, o.ObjectMeta, true)
			for k := range o.Data {
				p.add(where+" key "+k, validation.IsConfigMapKey(k)...)
			}
		case *corev1.Secret:
			checkMeta(&p, where, o.ObjectMeta, true)
			for k := range o.StringData {
				p.add(where+" key "+k, validation.IsConfigMapKey(k)...)
			}
		case *corev1.Service:
			checkMeta(&p, where, o.ObjectMeta, false)
			if len(o.Spec.Ports) == 0 {
				p.add(where, "no ports")
			}
			for _, port := range o.Spec.Ports {
				p.add(where+" port", validation.IsValidPortNum(int(port.Port))...)
				p.add(where+" port name", validation.IsValidPortName(port.Name)...)
			}
			if !selects(docs, o.Spec.Selector) {
				p.add(where, "its selector matches no pod template")
			}
		case *appsv1.StatefulSet:
			checkMeta(&p, where, o.ObjectMeta, false)
			checkSelector(&p, where, o.Spec.Selector, o.Spec.Template.Labels)
			if o.Spec.ServiceName == "" || !names["Service/"+o.Spec.ServiceName] {
				p.add(where, fmt.Sprintf("serviceName %q is not a Service here", o.Spec.ServiceName))
			}
			volumes := map[string]bool{}
			for _, c := range o.Spec.VolumeClaimTemplates {
				volumes[c.Name] = true
				if _, ok := c.Spec.Resources.Requests[corev1.ResourceStorage]; !ok {
					p.add(where+" claim "+c.Name, "no storage request")
				}
			}
			checkPod(&p, where, o.Spec.Template.Spec, volumes, names)
		case *appsv1.Deployment:
			checkMeta(&p, where, o.ObjectMeta, false)
			checkSelector(&p, where, o.Spec.Selector, o.Spec.Template.Labels)
			checkPod(&p, where, o.Spec.Template.Spec, map[string]bool{}, names)
		}
	}
	if len(p) > 0 {
		return errors.New(strings.Join(p, "; "))
	}
	return nil
}

func checkMeta(p *problems, where string, m metav1.ObjectMeta, subdomain bool) {
	if subdomain {
		p.add(where+" name", validation.IsDNS1123Subdomain(m.Name)...)
	} else {
		p.add(where+" name", validation.IsDNS1035Label(m.Name)...)
	}
	for k, v := range m.Labels {
		p.add(where+" label "+k, validation.IsQualifiedName(k)...)
		p.add(where+" label "+k, validation.IsValidLabelValue(v)...)
	}
}

func checkSelector(p *problems, where string, sel *metav1.LabelSelector, podLabels map[string]string) {
	if sel == nil || len(sel.MatchLabels) == 0 {
		p.add(where, "no selector")
		return
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		p.add(where, err.Error())
		return
	}
	if !s.Matches(labels.Set(podLabels)) {
		p.add(where, "selector does not match the pod template's labels")
	}
}

func selects(docs []doc, selector map[string]string) bool {
	s := labels.SelectorFromSet(selector)
	for _, d := range docs {
		switch o := d.obj.(type) {
		case *appsv1.StatefulSet:
			if s.Matches(labels.Set(o.Spec.Template.Labels)) {
				return true
			}
		case *appsv1.Deployment:
			if s.Matches(labels.Set(o.Spec.Template.Labels)) {
				return true
			}
		}
	}
	return false
}

func checkPod(p *problems, where string, spec corev1.PodSpec, volumes map[string]bool, names map[string]bool) {
	for _, v := range spec.Volumes {
		volumes[v.Name] = true
	}
	all := append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...)
	if len(spec.Containers) == 0 {
		p.add(where, "no containers")
	}
	for _, c := range all {
		cw := where + " container " + c.Name
		p.add(cw, validation.IsDNS1123Label(c.Name)...)
		if c.Image == "" {
			p.add(cw, "no image")
		}
		ports := map[string]bool{}
		for _, port := range c.Ports {
			p.add(cw+" port", validation.IsValidPortNum(int(port.ContainerPort))...)
			p.add(cw+" port name", validation.IsValidPortName(port.Name)...)
			ports[port.Name] = true
		}
		for _, probe := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe, c.StartupProbe} {
			if probe != nil && probe.HTTPGet != nil && probe.HTTPGet.Port.StrVal != "" && !ports[probe.HTTPGet.Port.StrVal] {
				p.add(cw, fmt.Sprintf("probe on port %q, which the container does not name", probe.HTTPGet.Port.StrVal))
			}
		}
		for _, m := range c.VolumeMounts {
			if !volumes[m.Name] {
				p.add(cw, fmt.Sprintf("mounts volume %q, which the pod does not have", m.Name))
			}
		}
		for _, e := range c.Env {
			p.add(cw+" env "+e.Name, validation.IsEnvVarName(e.Name)...)
		}
		for _, from := range c.EnvFrom {
			if from.ConfigMapRef != nil && !names["ConfigMap/"+from.ConfigMapRef.Name] {
				p.add(cw, fmt.Sprintf("envFrom ConfigMap %q is not defined here", from.ConfigMapRef.Name))
			}
		}
		for _, r := range []corev1.ResourceList{c.Resources.Requests, c.Resources.Limits} {
			for name := range r {
				if name != corev1.ResourceCPU && name != corev1.ResourceMemory && name != corev1.ResourceEphemeralStorage {
					p.add(cw, fmt.Sprintf("unexpected resource %q", name))
				}
			}
		}
		if req, ok := c.Resources.Requests[corev1.ResourceMemory]; ok {
			if lim, ok := c.Resources.Limits[corev1.ResourceMemory]; ok && lim.Cmp(req) < 0 {
				p.add(cw, "memory limit below its request")
			}
		}
	}
}
