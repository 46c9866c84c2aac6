//! Shared test helpers. Real-service tests read service addresses from `infra/local/env`.
