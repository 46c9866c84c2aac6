//! Catalog wrappers: the job's commit guard, maintain's base guard and the simulation's faulty
//! catalog each change `load_table` / `update_table` and forward everything else.

/// `catalog_passthrough! { impl Catalog for W { load_table.. update_table.. } }` writes the
/// `#[async_trait]` impl: the two given methods plus every other method forwarded to
/// `self.inner: Arc<dyn Catalog>`.
#[macro_export]
macro_rules! catalog_passthrough {
    (impl Catalog for $ty:ty { $($body:tt)* }) => {
        #[::async_trait::async_trait]
        impl ::iceberg::Catalog for $ty {
        async fn list_namespaces(
            &self,
            parent: Option<&::iceberg::NamespaceIdent>,
        ) -> ::iceberg::Result<Vec<::iceberg::NamespaceIdent>> {
            self.inner.list_namespaces(parent).await
        }
        async fn create_namespace(
            &self,
            namespace: &::iceberg::NamespaceIdent,
            properties: ::std::collections::HashMap<String, String>,
        ) -> ::iceberg::Result<::iceberg::Namespace> {
            self.inner.create_namespace(namespace, properties).await
        }
        async fn get_namespace(
            &self,
            namespace: &::iceberg::NamespaceIdent,
        ) -> ::iceberg::Result<::iceberg::Namespace> {
            self.inner.get_namespace(namespace).await
        }
        async fn namespace_exists(
            &self,
            namespace: &::iceberg::NamespaceIdent,
        ) -> ::iceberg::Result<bool> {
            self.inner.namespace_exists(namespace).await
        }
        async fn update_namespace(
            &self,
            namespace: &::iceberg::NamespaceIdent,
            properties: ::std::collections::HashMap<String, String>,
        ) -> ::iceberg::Result<()> {
            self.inner.update_namespace(namespace, properties).await
        }
        async fn drop_namespace(&self, namespace: &::iceberg::NamespaceIdent) -> ::iceberg::Result<()> {
            self.inner.drop_namespace(namespace).await
        }
        async fn list_tables(
            &self,
            namespace: &::iceberg::NamespaceIdent,
        ) -> ::iceberg::Result<Vec<::iceberg::TableIdent>> {
            self.inner.list_tables(namespace).await
        }
        async fn create_table(
            &self,
            namespace: &::iceberg::NamespaceIdent,
            creation: ::iceberg::TableCreation,
        ) -> ::iceberg::Result<::iceberg::table::Table> {
            self.inner.create_table(namespace, creation).await
        }
        async fn drop_table(&self, table: &::iceberg::TableIdent) -> ::iceberg::Result<()> {
            self.inner.drop_table(table).await
        }
        async fn purge_table(&self, table: &::iceberg::TableIdent) -> ::iceberg::Result<()> {
            self.inner.purge_table(table).await
        }
        async fn table_exists(&self, table: &::iceberg::TableIdent) -> ::iceberg::Result<bool> {
            self.inner.table_exists(table).await
        }
        async fn rename_table(
            &self,
            src: &::iceberg::TableIdent,
            dest: &::iceberg::TableIdent,
        ) -> ::iceberg::Result<()> {
            self.inner.rename_table(src, dest).await
        }
        async fn register_table(
            &self,
            table: &::iceberg::TableIdent,
            metadata_location: String,
        ) -> ::iceberg::Result<::iceberg::table::Table> {
            self.inner.register_table(table, metadata_location).await
        }
        $($body)*
        }
    };
}
