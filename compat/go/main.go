// Command franzgo runs the franz-go compatibility scenario: a pure-Go Kafka
// client (its own protocol code, no librdkafka, no Java) against a bootstrap
// address. kadm creates the topic; a producer sends keyed records with
// headers and acks=all (franz-go is idempotent by default); a group consumer
// reads them back with per-key order and commits; kadm shows the commits and
// deletes the topic.
//
// It prints one JSON line of what it observed and exits 0 only when every
// assertion held.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

const (
	partitions = 3
	keys       = 6
	perKey     = 40
	// waitMax bounds every wait (a hang becomes a failure); it is no speed
	// assertion: a healthy broker answers in a few seconds.
	waitMax = 40 * time.Second
)

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "FAIL: "+format+"\n", args...)
	os.Exit(1)
}

func check(condition bool, format string, args ...any) {
	if !condition {
		fail(format, args...)
	}
}

type delivered struct {
	key       string
	seq       int
	partition int32
	offset    int64
}

func main() {
	bootstrap := flag.String("bootstrap", "", "HOST:PORT of a Kafka-protocol listener")
	prefix := flag.String("topic-prefix", fmt.Sprintf("compat-%d-%d", time.Now().Unix(), os.Getpid()),
		"prefix of every topic and group name, so that runs do not collide")
	flag.Parse()
	if *bootstrap == "" {
		fmt.Fprintln(os.Stderr, "usage: franzgo --bootstrap HOST:PORT [--topic-prefix P]")
		os.Exit(2)
	}
	topic := *prefix + "-franzgo"
	group := *prefix + "-franzgo"
	ctx, cancel := context.WithTimeout(context.Background(), 4*waitMax)
	defer cancel()

	adminClient, err := kgo.NewClient(kgo.SeedBrokers(*bootstrap))
	check(err == nil, "admin client: %v", err)
	defer adminClient.Close()
	admin := kadm.NewClient(adminClient)

	brokers, err := admin.ListBrokers(ctx)
	check(err == nil && len(brokers) > 0, "ListBrokers: %v (%d brokers)", err, len(brokers))

	created, err := admin.CreateTopic(ctx, partitions, 1, map[string]*string{"retention.ms": kadm.StringPtr("3600000")}, topic)
	check(err == nil && created.Err == nil, "CreateTopic: %v %v", err, created.Err)
	// kadm returns a single topic's error as the call's error.
	_, err = admin.CreateTopic(ctx, partitions, 1, nil, topic)
	check(errors.Is(err, kerr.TopicAlreadyExists), "creating an existing topic answered %v", err)
	waitForLeaders(ctx, admin, topic)

	sent := produce(ctx, *bootstrap, topic)
	read := consume(ctx, *bootstrap, topic, group, len(sent))

	bySpot := map[[2]int64]delivered{}
	partitionOfKey := map[string]int32{}
	for _, d := range sent {
		bySpot[[2]int64{int64(d.partition), d.offset}] = d
		if p, ok := partitionOfKey[d.key]; ok {
			check(p == d.partition, "%s landed on two partitions", d.key)
		}
		partitionOfKey[d.key] = d.partition
	}
	check(len(bySpot) == len(sent), "two records acknowledged at one offset")
	nextSeq := map[string]int{}
	for _, r := range read {
		d, ok := bySpot[[2]int64{int64(r.Partition), r.Offset}]
		check(ok, "read %d/%d, which no acknowledgement named", r.Partition, r.Offset)
		check(string(r.Key) == d.key, "record at %d/%d has key %q, sent %q", r.Partition, r.Offset, r.Key, d.key)
		check(string(r.Value) == fmt.Sprintf("%s:%d", d.key, d.seq), "record at %d/%d has value %q", r.Partition, r.Offset, r.Value)
		check(len(r.Headers) == 1 && r.Headers[0].Key == "seq" && string(r.Headers[0].Value) == strconv.Itoa(d.seq),
			"record at %d/%d has headers %v", r.Partition, r.Offset, r.Headers)
		check(d.seq == nextSeq[d.key], "%s: read seq %d, expected %d (order broken)", d.key, d.seq, nextSeq[d.key])
		nextSeq[d.key]++
	}

	committed, err := admin.FetchOffsets(ctx, group)
	check(err == nil, "FetchOffsets: %v", err)
	ends, err := admin.ListEndOffsets(ctx, topic)
	check(err == nil, "ListEndOffsets: %v", err)
	committedOut := map[string]int64{}
	for p := int32(0); p < partitions; p++ {
		c, ok := committed.Lookup(topic, p)
		check(ok && c.Err == nil, "no commit for partition %d (%v)", p, c.Err)
		end, ok := ends.Lookup(topic, p)
		check(ok && end.Err == nil, "no end offset for partition %d", p)
		check(c.At == end.Offset, "partition %d committed at %d, end %d: lag %d", p, c.At, end.Offset, end.Offset-c.At)
		committedOut[strconv.Itoa(int(p))] = c.At
	}

	deleted, err := admin.DeleteTopic(ctx, topic)
	check(err == nil && deleted.Err == nil, "DeleteTopic: %v %v", err, deleted.Err)

	out, _ := json.Marshal(map[string]any{
		"scenario":         "franzgo",
		"records":          len(read),
		"partition_of_key": partitionOfKey,
		"committed":        committedOut,
		"create_existing":  "TOPIC_ALREADY_EXISTS",
	})
	fmt.Println(string(out))
}

func waitForLeaders(ctx context.Context, admin *kadm.Client, topic string) {
	deadline := time.Now().Add(waitMax)
	for {
		details, err := admin.ListTopics(ctx, topic)
		if err == nil {
			if t, ok := details[topic]; ok && t.Err == nil && len(t.Partitions) == partitions {
				ready := true
				for _, p := range t.Partitions {
					ready = ready && p.Leader >= 0 && p.Err == nil
				}
				if ready {
					return
				}
			}
		}
		check(time.Now().Before(deadline), "no leaders for %s after %v", topic, waitMax)
		time.Sleep(100 * time.Millisecond)
	}
}

func produce(ctx context.Context, bootstrap, topic string) []delivered {
	client, err := kgo.NewClient(kgo.SeedBrokers(bootstrap), kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.DefaultProduceTopic(topic), kgo.ProducerLinger(5*time.Millisecond))
	check(err == nil, "producer: %v", err)
	defer client.Close()
	var records []*kgo.Record
	for seq := 0; seq < perKey; seq++ {
		for k := 0; k < keys; k++ {
			key := fmt.Sprintf("key-%d", k)
			records = append(records, &kgo.Record{
				Key:     []byte(key),
				Value:   []byte(fmt.Sprintf("%s:%d", key, seq)),
				Headers: []kgo.RecordHeader{{Key: "seq", Value: []byte(strconv.Itoa(seq))}},
			})
		}
	}
	results := client.ProduceSync(ctx, records...)
	check(results.FirstErr() == nil, "produce: %v", results.FirstErr())
	out := make([]delivered, 0, len(results))
	// Results come in the order the promises completed, not the order of
	// the records: name each by its own record.
	for _, r := range results {
		seq, err := strconv.Atoi(string(r.Record.Headers[0].Value))
		check(err == nil, "header of an acknowledged record: %v", err)
		out = append(out, delivered{key: string(r.Record.Key), seq: seq, partition: r.Record.Partition, offset: r.Record.Offset})
	}
	return out
}

func consume(ctx context.Context, bootstrap, topic, group string, want int) []*kgo.Record {
	client, err := kgo.NewClient(kgo.SeedBrokers(bootstrap), kgo.ConsumerGroup(group), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.DisableAutoCommit())
	check(err == nil, "consumer: %v", err)
	defer client.Close()
	var read []*kgo.Record
	deadline := time.Now().Add(waitMax)
	for len(read) < want {
		check(time.Now().Before(deadline), "read %d of %d records after %v", len(read), want, waitMax)
		pollCtx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		fetches := client.PollFetches(pollCtx)
		cancel()
		fetches.EachError(func(t string, p int32, err error) {
			if !errors.Is(err, context.DeadlineExceeded) {
				fail("fetch %s/%d: %v", t, p, err)
			}
		})
		read = append(read, fetches.Records()...)
		if len(fetches.Records()) > 0 {
			check(client.CommitUncommittedOffsets(ctx) == nil, "commit failed")
		}
	}
	return read
}
