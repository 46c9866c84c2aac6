//! Seeded simulation of the protocol (filled in below).
