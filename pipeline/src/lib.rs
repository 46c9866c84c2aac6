//! recon streaming job (placeholder).
