//! shoal runtime
