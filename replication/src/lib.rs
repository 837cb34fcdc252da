//! Spate's cluster metadata controller: a Raft-replicated metadata log.
