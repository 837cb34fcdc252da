//! Spate Streams: a stream-processing library over spate-client, in the shape of Kafka Streams.
