//! batch-verify (placeholder).
