-- The Iceberg SQL catalog's tables, exactly as iceberg-catalog-sql 0.10.1 creates them (SqlCatalog::new), which is
-- the Java JdbcCatalog schema V1. infra/local/up runs this as user recon on recon_catalog, so that catalogs opened
-- concurrently on a fresh database do not race on CREATE TABLE (duplicate key on pg_type_typname_nsp_index).
CREATE TABLE IF NOT EXISTS iceberg_tables (
    catalog_name VARCHAR(255) NOT NULL,
    table_namespace VARCHAR(255) NOT NULL,
    table_name VARCHAR(255) NOT NULL,
    metadata_location VARCHAR(1000),
    previous_metadata_location VARCHAR(1000),
    iceberg_type VARCHAR(5),
    PRIMARY KEY (catalog_name, table_namespace, table_name));

CREATE TABLE IF NOT EXISTS iceberg_namespace_properties (
    catalog_name VARCHAR(255) NOT NULL,
    namespace VARCHAR(255) NOT NULL,
    property_key VARCHAR(255),
    property_value VARCHAR(1000),
    PRIMARY KEY (catalog_name, namespace, property_key));
