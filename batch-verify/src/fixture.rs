//! Test lakehouses (placeholder).
