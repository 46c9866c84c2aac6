//! recon event model (placeholder).
