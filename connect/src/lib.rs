//! Spate Connect: source and sink connectors and their workers over spate-client, in the shape of Kafka Connect.
