// Readiness probe for the local Kafka broker, run by stack/stack.sh with Java's
// single-file source launcher when no Python with confluent_kafka is at hand:
//   java -cp '<kafka-libs>/*' stack/kafka/KafkaProbe.java 127.0.0.1:9092 <seconds>
// Exits 0 as soon as the broker answers a metadata (DescribeCluster) request with
// at least one node, 1 when the deadline passes first.
import java.util.Properties;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;

public class KafkaProbe {
    public static void main(String[] args) throws Exception {
        String bootstrap = args.length > 0 ? args[0] : "127.0.0.1:9092";
        long seconds = args.length > 1 ? Long.parseLong(args[1]) : 30;
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(seconds);
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "3000");
        p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "3000");
        p.put(AdminClientConfig.RECONNECT_BACKOFF_MAX_MS_CONFIG, "500");
        try (Admin admin = Admin.create(p)) {
            while (System.nanoTime() < deadline) {
                try {
                    int n = admin.describeCluster().nodes().get(3, TimeUnit.SECONDS).size();
                    if (n > 0) {
                        System.out.println("kafka answers metadata: " + n + " node(s)");
                        return;
                    }
                } catch (Exception e) {
                    // not ready yet
                }
                Thread.sleep(500);
            }
        }
        System.err.println("kafka did not answer metadata within " + seconds + " s");
        System.exit(1);
    }
}
