package presence.bench;

import java.lang.management.ManagementFactory;
import java.time.Instant;
import java.time.LocalDateTime;
import java.time.ZoneOffset;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.atomic.AtomicLong;

import org.apache.flink.table.api.EnvironmentSettings;
import org.apache.flink.table.api.TableEnvironment;
import org.apache.flink.table.api.TableResult;
import org.apache.flink.table.functions.FunctionContext;
import org.apache.flink.table.functions.ScalarFunction;
import org.apache.flink.types.Row;
import org.apache.flink.util.CloseableIterator;

/**
 * The bench's job in Flink SQL on a local MiniCluster (docs/benchmarks.md).
 *
 * <p>Kafka source bounded to the latest offsets, JSON, the float epoch-seconds {@code timestamp}
 * declared DOUBLE and cast to TIMESTAMP_LTZ(3), one watermark per partition (the Kafka source's
 * per-split watermarks), HOP windows (slide = bucket, size = window) with COUNT(DISTINCT) of the
 * drivers online and on duty. Rows come back through {@code collect()} and are printed as JSON
 * lines {@code {"row": <start of the window's last bucket, epoch s>, "online": n, "available":
 * m}}, the key and values of the harness's oracle. The last line, {@code flink-stats {...}},
 * holds when the first record was read (seconds after the JVM started) and the read-phase rate,
 * counted by a probe function in the WHERE clause (on by default; {@code --no-probe} leaves it
 * out of the plan).
 */
public final class FlinkPeer {

    static final String USAGE = String.join("\n",
            "usage: java -cp CLASSPATH presence.bench.FlinkPeer --topic TOPIC [options]",
            "",
            "The bench's job in Flink SQL on a local MiniCluster; rows printed as JSON lines.",
            "",
            "options:",
            "  --topic TOPIC              Kafka topic to read from its earliest to its latest offsets",
            "  --brokers HOST:PORT        bootstrap servers (default 127.0.0.1:9092)",
            "  --watermark-seconds N      watermark delay, whole seconds (default 660: exact);",
            "                             written as INTERVAL 'N' SECOND, or as MINUTE when N is",
            "                             a whole number of minutes (Flink rejects '660' SECOND)",
            "  --bucket-seconds N         HOP slide (default 60)",
            "  --window-seconds N         HOP size (default 300)",
            "  --parallelism N            parallelism.default (default 1)",
            "  --set KEY=VALUE            any further Flink configuration (repeatable)",
            "  --kafka KEY=VALUE          a Kafka consumer property of the source (repeatable),",
            "                             e.g. max.partition.fetch.bytes=10485760",
            "  --no-probe                 leave the read-rate probe out of the plan",
            "  --print-sql                print the SQL and exit",
            "  --help                     this text");

    private FlinkPeer() {}

    /** Counts the records that reach the filter: the read phase, start to end. */
    public static final class Probe extends ScalarFunction {
        static final AtomicLong FIRST_NANOS = new AtomicLong(0);
        static final AtomicLong FIRST_MILLIS = new AtomicLong(0);
        static volatile long lastNanos = 0;
        static final AtomicLong COUNT = new AtomicLong(0);

        public boolean eval(Long driver) {
            long now = System.nanoTime();
            if (COUNT.getAndIncrement() == 0) {
                FIRST_NANOS.set(now);
                FIRST_MILLIS.set(System.currentTimeMillis());
            }
            lastNanos = now;
            return true;
        }

        @Override
        public boolean isDeterministic() {
            return false;
        }

        @Override
        public void open(FunctionContext context) {}
    }

    static final class Options {
        String topic;
        String brokers = "127.0.0.1:9092";
        long watermarkSeconds = 660;
        long bucketSeconds = 60;
        long windowSeconds = 300;
        int parallelism = 1;
        boolean probe = true;
        boolean printSql = false;
        final List<String[]> extra = new ArrayList<>();
        final List<String[]> kafka = new ArrayList<>();
    }

    static Options parse(String[] args) {
        Options o = new Options();
        for (int i = 0; i < args.length; i++) {
            String a = args[i];
            switch (a) {
                case "--help":
                case "-h":
                    System.out.println(USAGE);
                    System.exit(0);
                    break;
                case "--no-probe":
                    o.probe = false;
                    break;
                case "--print-sql":
                    o.printSql = true;
                    break;
                default:
                    if (i + 1 >= args.length) {
                        usageError("missing value after " + a);
                    }
                    String v = args[++i];
                    switch (a) {
                        case "--topic": o.topic = v; break;
                        case "--brokers": o.brokers = v; break;
                        case "--watermark-seconds": o.watermarkSeconds = positive(a, v, true); break;
                        case "--bucket-seconds": o.bucketSeconds = positive(a, v, false); break;
                        case "--window-seconds": o.windowSeconds = positive(a, v, false); break;
                        case "--parallelism": o.parallelism = (int) positive(a, v, false); break;
                        case "--set":
                            o.extra.add(keyValue(a, v));
                            break;
                        case "--kafka":
                            o.kafka.add(keyValue(a, v));
                            break;
                        default:
                            usageError("unknown option " + a);
                    }
            }
        }
        if (o.topic == null || o.topic.isEmpty()) {
            usageError("--topic is required");
        }
        if (o.windowSeconds % o.bucketSeconds != 0) {
            usageError("--window-seconds must be a multiple of --bucket-seconds");
        }
        return o;
    }

    static String[] keyValue(String name, String v) {
        int eq = v.indexOf('=');
        if (eq <= 0) {
            usageError(name + " needs KEY=VALUE, got " + v);
        }
        return new String[] {v.substring(0, eq), v.substring(eq + 1)};
    }

    static long positive(String name, String v, boolean zeroOk) {
        long n;
        try {
            n = Long.parseLong(v);
        } catch (NumberFormatException e) {
            usageError(name + " must be a whole number, got " + v);
            return 0;
        }
        if (n < 0 || (n == 0 && !zeroOk)) {
            usageError(name + " must be " + (zeroOk ? ">= 0" : "> 0") + ", got " + v);
        }
        return n;
    }

    static void usageError(String msg) {
        System.err.println("flink-peer: " + msg);
        System.err.println(USAGE);
        System.exit(2);
    }

    /**
     * An interval literal Flink accepts: its leading field has at most 2 digits by default, so
     * {@code INTERVAL '300' SECOND} and {@code '660' SECOND} are rejected; whole minutes or hours
     * are written as such.
     */
    static String interval(long seconds) {
        if (seconds % 3600 == 0 && seconds > 0) {
            return "INTERVAL '" + (seconds / 3600) + "' HOUR";
        }
        if (seconds % 60 == 0 && seconds > 0) {
            return "INTERVAL '" + (seconds / 60) + "' MINUTE";
        }
        return "INTERVAL '" + seconds + "' SECOND";
    }

    static String quote(String s) {
        return "'" + s.replace("'", "''") + "'";
    }

    static String sourceDdl(Options o) {
        StringBuilder props = new StringBuilder();
        for (String[] kv : o.kafka) {
            props.append("  ").append(quote("properties." + kv[0])).append(" = ")
                    .append(quote(kv[1])).append(",\n");
        }
        return "CREATE TEMPORARY TABLE pings (\n"
                + "  driver_id BIGINT,\n"
                + "  `timestamp` DOUBLE,\n"
                + "  on_duty INT,\n"
                + "  ts AS TO_TIMESTAMP_LTZ(CAST(ROUND(`timestamp` * 1000, 0) AS BIGINT), 3),\n"
                + "  WATERMARK FOR ts AS ts - " + interval(o.watermarkSeconds) + "\n"
                + ") WITH (\n"
                + "  'connector' = 'kafka',\n"
                + "  'topic' = " + quote(o.topic) + ",\n"
                + "  'properties.bootstrap.servers' = " + quote(o.brokers) + ",\n"
                + "  'properties.group.id' = 'bench-flink',\n"
                + props
                + "  'scan.startup.mode' = 'earliest-offset',\n"
                + "  'scan.bounded.mode' = 'latest-offset',\n"
                + "  'format' = 'json'\n"
                + ")";
    }

    /** The source as read: through the probe when it is on (a view keeps the time attribute). */
    static String viewDdl(Options o) {
        return "CREATE TEMPORARY VIEW read_pings AS SELECT * FROM pings"
                + (o.probe ? " WHERE probe(driver_id)" : "");
    }

    static String query(Options o) {
        return "SELECT window_end, COUNT(DISTINCT driver_id) AS online,\n"
                + "  COUNT(DISTINCT CASE WHEN on_duty = 1 THEN driver_id END) AS available\n"
                + "FROM TABLE(HOP(TABLE read_pings, DESCRIPTOR(ts), "
                + interval(o.bucketSeconds) + ", " + interval(o.windowSeconds) + "))\n"
                + "GROUP BY window_start, window_end";
    }

    public static void main(String[] args) throws Exception {
        Options o = parse(args);
        if (o.printSql) {
            System.out.println(sourceDdl(o) + ";\n" + viewDdl(o) + ";\n" + query(o) + ";");
            return;
        }
        long jvmStart = ManagementFactory.getRuntimeMXBean().getStartTime();
        TableEnvironment env = TableEnvironment.create(EnvironmentSettings.inStreamingMode());
        env.getConfig().set("table.local-time-zone", "UTC");
        env.getConfig().set("parallelism.default", Integer.toString(o.parallelism));
        env.getConfig().set("pipeline.name", "presence-bench-flink");
        for (String[] kv : o.extra) {
            env.getConfig().set(kv[0], kv[1]);
        }
        if (o.probe) {
            env.createTemporarySystemFunction("probe", Probe.class);
        }
        env.executeSql(sourceDdl(o));
        env.executeSql(viewDdl(o));
        TableResult result = env.executeSql(query(o));
        long submittedMillis = System.currentTimeMillis();
        long rows = 0;
        StringBuilder out = new StringBuilder();
        try (CloseableIterator<Row> it = result.collect()) {
            while (it.hasNext()) {
                Row r = it.next();
                // window_end is TIMESTAMP(3) (LocalDateTime, in the session's zone: UTC here).
                Object end = r.getField(0);
                long endSecond = end instanceof Instant
                        ? ((Instant) end).getEpochSecond()
                        : ((LocalDateTime) end).toEpochSecond(ZoneOffset.UTC);
                long row = endSecond - o.bucketSeconds;
                out.append(String.format(Locale.ROOT, "{\"row\":%d,\"online\":%d,\"available\":%d}%n",
                        row, (Long) r.getField(1), (Long) r.getField(2)));
                rows++;
            }
        }
        long endMillis = System.currentTimeMillis();
        System.out.print(out);
        long n = Probe.COUNT.get();
        String stats;
        if (o.probe && n > 0) {
            double first = (Probe.FIRST_MILLIS.get() - jvmStart) / 1000.0;
            double read = (Probe.lastNanos - Probe.FIRST_NANOS.get()) / 1e9;
            stats = String.format(Locale.ROOT,
                    "{\"rows\":%d,\"records\":%d,\"submitted_s\":%.3f,\"first_record_s\":%.3f,"
                            + "\"read_s\":%.3f,\"read_rate\":%.0f,\"end_s\":%.3f}",
                    rows, n, (submittedMillis - jvmStart) / 1000.0, first, read,
                    read > 0 ? n / read : 0.0, (endMillis - jvmStart) / 1000.0);
        } else {
            stats = String.format(Locale.ROOT, "{\"rows\":%d,\"submitted_s\":%.3f,\"end_s\":%.3f}",
                    rows, (submittedMillis - jvmStart) / 1000.0, (endMillis - jvmStart) / 1000.0);
        }
        System.out.println("flink-stats " + stats);
        System.out.flush();
        System.exit(0);
    }
}
