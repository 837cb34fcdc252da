package dev.spate.compat;

import java.time.Duration;
import java.util.Collection;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.ExecutionException;
import java.util.function.BooleanSupplier;
import java.util.function.Supplier;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.common.KafkaFuture;

/** What every Java scenario shares: arguments, assertions, waiting, topics. */
final class Scenario {
    private Scenario() {}

    /**
     * How long a scenario waits for one condition (a group to settle,
     * records to arrive) before failing. A bound on hangs, not a speed
     * assertion: a healthy broker meets each in a few seconds.
     */
    static final Duration WAIT_MAX = Duration.ofSeconds(40);

    /** An assertion that did not hold: the scenario fails with its message. */
    static final class Failure extends RuntimeException {
        Failure(String message) {
            super(message);
        }
    }

    record Args(String bootstrap, String topicPrefix, String groupProtocol) {
        static Args parse(String[] argv) {
            String bootstrap = null;
            String prefix = "compat-" + System.currentTimeMillis() / 1000 + "-" + ProcessHandle.current().pid();
            String groupProtocol = "classic";
            for (int i = 1; i < argv.length; i += 2) {
                if (i + 1 >= argv.length) {
                    throw new Failure("flag " + argv[i] + " has no value");
                }
                switch (argv[i]) {
                    case "--bootstrap" -> bootstrap = argv[i + 1];
                    case "--topic-prefix" -> prefix = argv[i + 1];
                    case "--group-protocol" -> groupProtocol = argv[i + 1];
                    default -> throw new Failure("unknown flag " + argv[i]);
                }
            }
            if (bootstrap == null) {
                throw new Failure("--bootstrap HOST:PORT is required");
            }
            return new Args(bootstrap, prefix, groupProtocol);
        }
    }

    static void check(boolean condition, String message) {
        if (!condition) {
            throw new Failure(message);
        }
    }

    static void log(String message) {
        System.err.println(message);
    }

    /** Polls until {@code condition} holds; fails naming what and the state. */
    static void waitUntil(BooleanSupplier condition, String what, Supplier<String> state) {
        long deadline = System.nanoTime() + WAIT_MAX.toNanos();
        while (!condition.getAsBoolean()) {
            if (System.nanoTime() > deadline) {
                throw new Failure("timed out after " + WAIT_MAX.toSeconds() + "s waiting for " + what
                        + " (" + state.get() + ")");
            }
            sleepMs(100);
        }
    }

    static void sleepMs(long ms) {
        try {
            Thread.sleep(ms);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new Failure("interrupted");
        }
    }

    /** The result of a future, or the Kafka exception inside it thrown as is. */
    static <T> T get(KafkaFuture<T> future) throws Exception {
        try {
            return future.get();
        } catch (ExecutionException e) {
            if (e.getCause() instanceof Exception cause) {
                throw cause;
            }
            throw e;
        }
    }

    /** The simple name of the exception a future fails with; fails if it succeeds. */
    static String expectError(KafkaFuture<?> future, String what) {
        try {
            future.get();
        } catch (ExecutionException e) {
            return e.getCause().getClass().getSimpleName();
        } catch (InterruptedException e) {
            throw new Failure("interrupted");
        }
        throw new Failure(what + " succeeded; Kafka refuses it");
    }

    static Admin admin(String bootstrap) {
        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        return Admin.create(props);
    }

    /** Creates topics and waits until every partition has a leader. */
    static void createTopics(Admin admin, Collection<NewTopic> topics) throws Exception {
        get(admin.createTopics(topics).all());
        List<String> names = topics.stream().map(NewTopic::name).toList();
        waitUntil(() -> {
            try {
                Map<String, TopicDescription> described = admin.describeTopics(names).allTopicNames().get();
                return described.values().stream().allMatch(t -> t.partitions().stream()
                        .allMatch(p -> p.leader() != null && p.leader().id() >= 0));
            } catch (Exception e) {
                return false;
            }
        }, "leaders for every partition of " + names, () -> "");
    }

    static void deleteTopics(Admin admin, Collection<String> names) {
        try {
            admin.deleteTopics(names).all().get();
        } catch (Exception e) {
            log("cleanup: deleting " + names + ": " + e);
        }
    }
}
