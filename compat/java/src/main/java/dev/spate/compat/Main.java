package dev.spate.compat;

import java.util.Map;

/**
 * Entry point of the Java client scenarios. Each takes {@code --bootstrap
 * HOST:PORT} and {@code --topic-prefix P}, prints one JSON line of what it
 * observed on stdout, and exits 0 only when every assertion held (1 with a
 * message on stderr otherwise, 2 for a usage error).
 */
public final class Main {
    private Main() {}

    public static void main(String[] argv) {
        if (argv.length < 1) {
            usage();
        }
        String name = argv[0];
        try {
            if (name.equals("streams-twins")) {
                // Not a scenario: the differential test's Kafka Streams
                // twins, with flags of their own, running until stdin ends.
                StreamsTwins.run(argv);
                System.exit(0);
            }
            if (name.equals("streams-bench-wordcount")) {
                // Not a scenario: the Kafka Streams side of
                // streams/examples/bench.rs's wordcount.
                StreamsBench.run(argv);
                System.exit(0);
            }
            Scenario.Args args = Scenario.Args.parse(argv);
            Map<String, Object> observed = switch (name) {
                case "produce-consume" -> ProduceConsume.run(args);
                case "group" -> GroupScenario.run(args);
                case "admin" -> AdminScenario.run(args);
                case "transactions" -> Transactions.run(args);
                case "streams-wordcount" -> WordCount.run(args, false);
                case "streams-wordcount-eos" -> WordCount.run(args, true);
                default -> {
                    usage();
                    yield null;
                }
            };
            System.out.println(Json.write(observed));
            System.out.flush();
            System.exit(0);
        } catch (Scenario.Failure failure) {
            System.err.println("FAIL: " + failure.getMessage());
            System.exit(1);
        } catch (Exception unexpected) {
            System.err.println("FAIL: " + name + " threw:");
            unexpected.printStackTrace();
            System.exit(1);
        }
    }

    private static void usage() {
        System.err.println("usage: run.sh {produce-consume|group|admin|transactions|streams-wordcount|streams-wordcount-eos} --bootstrap HOST:PORT"
                + " [--topic-prefix P] [--group-protocol classic|consumer]");
        System.err.println("       run.sh streams-twins --bootstrap HOST:PORT --prefix P --state-dir DIR");
        System.err.println("       run.sh streams-bench-wordcount --bootstrap HOST:PORT --lines N --state-dir DIR");
        System.exit(2);
    }
}
