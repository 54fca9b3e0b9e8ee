//! Node description: interfaces, queues, cores, XDP mode, RSS, MTU; validation and apply.
