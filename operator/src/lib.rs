//! The shoal operator (see issue: Kubernetes).
