//! Real-service tests: Kafka transactions, the Iceberg SQL catalog (PostgreSQL and SQLite) and the S3 server's
//! conditional writes. They need the services of `infra/local/up` and the environment of `infra/local/env`;
//! without `RECON_SERVICES=1` each prints a loud SKIPPED line and returns (see `recon_tests::services_or_skip`).
//! The SQLite catalog test needs no service and always runs.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use iceberg::spec::{NestedField, PrimitiveType, Schema, Type};
use iceberg::{Catalog, CatalogBuilder, NamespaceIdent, TableCreation, TableIdent};
use iceberg_catalog_sql::{
    SQL_CATALOG_PROP_BIND_STYLE, SQL_CATALOG_PROP_URI, SQL_CATALOG_PROP_WAREHOUSE, SqlBindStyle,
    SqlCatalogBuilder,
};
use iceberg_storage_opendal::OpenDalStorageFactory;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload, UpdateVersion};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use recon_tests::{Services, services_or_skip, unique_name};

/// The catalog name every recon component uses (one name everywhere: see docs on the SQL catalog).
const CATALOG_NAME: &str = "recon";

// ------------------------------------------------------------------------------------------------------------
// (a) Kafka: a transactional producer commits one transaction and aborts another; a read_committed consumer
// sees exactly the committed records.

const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);

fn kafka_config(svc: &Services) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &svc.kafka_bootstrap);
    c
}

async fn create_topic(svc: &Services, topic: &str) {
    let admin: AdminClient<DefaultClientContext> =
        kafka_config(svc).create().expect("admin client");
    let opts = AdminOptions::new().operation_timeout(Some(KAFKA_TIMEOUT));
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
            &opts,
        )
        .await
        .expect("create_topics request");
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
}

async fn delete_topic(svc: &Services, topic: &str) {
    let admin: AdminClient<DefaultClientContext> =
        kafka_config(svc).create().expect("admin client");
    let opts = AdminOptions::new().operation_timeout(Some(KAFKA_TIMEOUT));
    // Best effort: the topic name is unique, a leftover harms nothing.
    let _ = admin.delete_topics(&[topic], &opts).await;
}

/// Reads partition 0 of `topic` from the beginning until a record with key `until_key` arrives (or the deadline
/// passes) and returns the keys seen, in order.
fn read_keys(svc: &Services, topic: &str, isolation: &str, until_key: &str) -> Vec<String> {
    let consumer: BaseConsumer = kafka_config(svc)
        .set("group.id", unique_name("recon-test-group"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .expect("tpl");
    consumer.assign(&tpl).expect("assign");

    let deadline = Instant::now() + KAFKA_TIMEOUT;
    let mut keys = Vec::new();
    while Instant::now() < deadline {
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let msg = msg.expect("consume");
        let key = String::from_utf8(msg.key().expect("key").to_vec()).expect("utf8 key");
        let done = key == until_key;
        keys.push(key);
        if done {
            return keys;
        }
    }
    panic!("{isolation} consumer: no record {until_key:?} within {KAFKA_TIMEOUT:?}; saw {keys:?}");
}

fn high_watermark(svc: &Services, topic: &str) -> i64 {
    let consumer: BaseConsumer = kafka_config(svc)
        .set("group.id", unique_name("recon-test-wm"))
        .create()
        .expect("consumer");
    let (_low, high) = consumer
        .fetch_watermarks(topic, 0, KAFKA_TIMEOUT)
        .expect("fetch_watermarks");
    high
}

/// Produces: transaction 1 `c-0..c-2` committed, transaction 2 `a-0..a-2` aborted, transaction 3 `end` committed.
/// librdkafka's transaction calls block, so this runs on a blocking thread.
fn produce_transactions(svc: &Services, topic: &str) {
    let producer: BaseProducer = kafka_config(svc)
        .set("transactional.id", unique_name("recon-test-txn"))
        .set("transaction.timeout.ms", "60000")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("transactional producer");
    producer
        .init_transactions(KAFKA_TIMEOUT)
        .expect("init_transactions");

    let send_all = |keys: &[&str]| {
        for key in keys {
            let payload = format!("payload of {key}");
            producer
                .send(BaseRecord::to(topic).key(*key).payload(&payload))
                .unwrap_or_else(|(e, _)| panic!("send {key}: {e}"));
        }
    };

    producer.begin_transaction().expect("begin 1");
    send_all(&["c-0", "c-1", "c-2"]);
    producer
        .commit_transaction(KAFKA_TIMEOUT)
        .expect("commit 1");

    producer.begin_transaction().expect("begin 2");
    send_all(&["a-0", "a-1", "a-2"]);
    // The aborted records must really reach the log (flush), so that the consumer has something to filter.
    producer.flush(KAFKA_TIMEOUT).expect("flush 2");
    producer.abort_transaction(KAFKA_TIMEOUT).expect("abort 2");

    producer.begin_transaction().expect("begin 3");
    send_all(&["end"]);
    producer
        .commit_transaction(KAFKA_TIMEOUT)
        .expect("commit 3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_read_committed_sees_only_committed_transactions() {
    let Some(svc) = services_or_skip("kafka_read_committed_sees_only_committed_transactions")
    else {
        return;
    };
    let topic = unique_name("recon-test-txn");
    create_topic(&svc, &topic).await;

    let (s, t) = (svc.clone(), topic.clone());
    tokio::task::spawn_blocking(move || produce_transactions(&s, &t))
        .await
        .expect("producer thread");

    let (s, t) = (svc.clone(), topic.clone());
    let (committed, uncommitted, high) = tokio::task::spawn_blocking(move || {
        (
            read_keys(&s, &t, "read_committed", "end"),
            read_keys(&s, &t, "read_uncommitted", "end"),
            high_watermark(&s, &t),
        )
    })
    .await
    .expect("consumer thread");

    assert_eq!(committed, ["c-0", "c-1", "c-2", "end"], "read_committed");
    // The aborted records are in the log: a read_uncommitted reader sees them, so the filtering above is the
    // broker's transaction handling and not records that never arrived.
    assert_eq!(
        uncommitted,
        ["c-0", "c-1", "c-2", "a-0", "a-1", "a-2", "end"],
        "read_uncommitted"
    );
    // 7 records + 3 transaction markers (commit, abort, commit), each taking an offset.
    assert_eq!(high, 10, "high watermark");

    delete_topic(&svc, &topic).await;
}

// ------------------------------------------------------------------------------------------------------------
// (b) Iceberg SQL catalog: create a namespace and a table, load it back, compare the schema.

fn payments_schema() -> Schema {
    Schema::builder()
        .with_schema_id(0)
        .with_fields(vec![
            NestedField::required(1, "event_id", Type::Primitive(PrimitiveType::String)).into(),
            NestedField::required(2, "account_id", Type::Primitive(PrimitiveType::Long)).into(),
            NestedField::required(
                3,
                "amount",
                Type::Primitive(PrimitiveType::Decimal {
                    precision: 18,
                    scale: 2,
                }),
            )
            .into(),
            NestedField::required(4, "currency", Type::Primitive(PrimitiveType::String)).into(),
            NestedField::required(5, "event_time", Type::Primitive(PrimitiveType::Timestamptz))
                .into(),
            NestedField::optional(6, "memo", Type::Primitive(PrimitiveType::String)).into(),
        ])
        .build()
        .expect("schema")
}

/// Creates `<namespace>.payments` through `catalog`, loads it back (also through `reopened`, a second catalog
/// on the same database, when given) and checks the schema. Returns the table's metadata location.
async fn create_and_load_table(
    catalog: &impl Catalog,
    reopened: Option<&dyn Catalog>,
    namespace: &str,
) -> String {
    let ns = NamespaceIdent::new(namespace.to_string());
    catalog
        .create_namespace(
            &ns,
            HashMap::from([("owner".to_string(), "recon-tests".to_string())]),
        )
        .await
        .expect("create namespace");
    assert!(
        catalog
            .namespace_exists(&ns)
            .await
            .expect("namespace_exists")
    );

    let schema = payments_schema();
    let created = catalog
        .create_table(
            &ns,
            TableCreation::builder()
                .name("payments".to_string())
                .schema(schema.clone())
                .build(),
        )
        .await
        .expect("create table");
    let ident = TableIdent::new(ns.clone(), "payments".to_string());
    assert_eq!(created.identifier(), &ident);

    let loaded = catalog.load_table(&ident).await.expect("load table");
    assert_eq!(
        loaded.metadata().current_schema().as_struct(),
        schema.as_struct(),
        "schema after load"
    );
    assert_eq!(loaded.metadata().uuid(), created.metadata().uuid());
    let tables = catalog.list_tables(&ns).await.expect("list tables");
    assert_eq!(tables, vec![ident.clone()]);

    if let Some(other) = reopened {
        let again = other
            .load_table(&ident)
            .await
            .expect("load from reopened catalog");
        assert_eq!(
            again.metadata().current_schema().as_struct(),
            schema.as_struct()
        );
        assert_eq!(again.metadata_location(), loaded.metadata_location());
    }
    loaded
        .metadata_location()
        .expect("metadata location")
        .to_string()
}

#[tokio::test]
async fn sql_catalog_on_sqlite_with_local_fs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("catalog.db");
    let warehouse = dir.path().join("warehouse");
    std::fs::create_dir_all(&warehouse).expect("warehouse dir");
    let props = HashMap::from([
        (
            SQL_CATALOG_PROP_URI.to_string(),
            format!("sqlite:{}?mode=rwc", db.display()),
        ),
        (
            SQL_CATALOG_PROP_WAREHOUSE.to_string(),
            warehouse.display().to_string(),
        ),
        (
            SQL_CATALOG_PROP_BIND_STYLE.to_string(),
            SqlBindStyle::QMark.to_string(),
        ),
    ]);
    let open = || async {
        SqlCatalogBuilder::default()
            .with_storage_factory(Arc::new(OpenDalStorageFactory::Fs))
            .load(CATALOG_NAME, props.clone())
            .await
            .expect("open sqlite catalog")
    };
    let catalog = open().await;
    let reopened = open().await;

    let location = create_and_load_table(&catalog, Some(&reopened), "recon_sqlite").await;
    assert!(
        location.starts_with(&warehouse.display().to_string()),
        "{location}"
    );
    let on_disk = location.trim_start_matches("file:");
    assert!(
        std::path::Path::new(on_disk).is_file(),
        "metadata file {on_disk} missing"
    );
}

#[tokio::test]
async fn sql_catalog_on_postgres_with_s3_warehouse() {
    let Some(svc) = services_or_skip("sql_catalog_on_postgres_with_s3_warehouse") else {
        return;
    };
    let run = unique_name("run");
    let warehouse = format!("s3://{}/tests/{run}", svc.s3.warehouse_bucket);
    let mut props = svc.s3.iceberg_props();
    props.insert(SQL_CATALOG_PROP_URI.to_string(), svc.pg_catalog_url.clone());
    props.insert(SQL_CATALOG_PROP_WAREHOUSE.to_string(), warehouse.clone());
    props.insert(
        SQL_CATALOG_PROP_BIND_STYLE.to_string(),
        SqlBindStyle::DollarNumeric.to_string(),
    );
    props.insert("pool.max-connections".to_string(), "4".to_string());
    let open = || async {
        SqlCatalogBuilder::default()
            .with_storage_factory(svc.s3.iceberg_storage_factory())
            .load(CATALOG_NAME, props.clone())
            .await
            .expect("open PostgreSQL catalog")
    };
    let catalog = open().await;
    let reopened = open().await;

    let namespace = unique_name("recon_pg");
    let location = create_and_load_table(&catalog, Some(&reopened), &namespace).await;
    assert!(location.starts_with(&warehouse), "{location}");

    // The metadata file is really on the S3 server.
    let store = svc
        .s3
        .object_store(&svc.s3.warehouse_bucket)
        .expect("object store");
    let key = location
        .strip_prefix(&format!("s3://{}/", svc.s3.warehouse_bucket))
        .expect("key");
    let meta = store
        .head(&ObjectPath::from(key))
        .await
        .expect("metadata object on S3");
    assert!(meta.size > 0);

    // The catalog rows are in PostgreSQL under the shared catalog name.
    let pool = sqlx::PgPool::connect(&svc.pg_catalog_url)
        .await
        .expect("connect to catalog db");
    let row: (String,) = sqlx::query_as(
        "SELECT metadata_location FROM iceberg_tables \
         WHERE catalog_name = $1 AND table_namespace = $2 AND table_name = 'payments'",
    )
    .bind(CATALOG_NAME)
    .bind(&namespace)
    .fetch_one(&pool)
    .await
    .expect("catalog row");
    assert_eq!(row.0, location);
    pool.close().await;

    // Leave the shared catalog tidy (the files stay, under a unique prefix).
    let ns = NamespaceIdent::new(namespace.clone());
    catalog
        .drop_table(&TableIdent::new(ns.clone(), "payments".to_string()))
        .await
        .expect("drop table");
    catalog.drop_namespace(&ns).await.expect("drop namespace");
}

// ------------------------------------------------------------------------------------------------------------
// (c) S3: write and read an object; create-if-absent (If-None-Match: *) and compare-and-swap (If-Match).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_put_get_and_conditional_create() {
    let Some(svc) = services_or_skip("s3_put_get_and_conditional_create") else {
        return;
    };
    let store = Arc::new(
        svc.s3
            .object_store(&svc.s3.checkpoint_bucket)
            .expect("object store"),
    );
    let prefix = unique_name("tests");

    // Plain write and read back.
    let plain = ObjectPath::from(format!("{prefix}/plain.bin"));
    let body: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    store
        .put(&plain, PutPayload::from(body.clone()))
        .await
        .expect("put");
    let got = store
        .get(&plain)
        .await
        .expect("get")
        .bytes()
        .await
        .expect("body");
    assert_eq!(got.as_ref(), body.as_slice());
    assert_eq!(
        store.head(&plain).await.expect("head").size,
        body.len() as u64
    );

    // Create-if-absent twice: the second is AlreadyExists and the first body stays.
    let marker = ObjectPath::from(format!("{prefix}/marker.json"));
    let first = store
        .put_opts(
            &marker,
            PutPayload::from_static(b"first"),
            PutMode::Create.into(),
        )
        .await
        .expect("first create");
    match store
        .put_opts(
            &marker,
            PutPayload::from_static(b"second"),
            PutMode::Create.into(),
        )
        .await
    {
        Err(object_store::Error::AlreadyExists { .. }) => {}
        other => panic!("second create: expected AlreadyExists, got {other:?}"),
    }
    let got = store
        .get(&marker)
        .await
        .expect("get")
        .bytes()
        .await
        .expect("body");
    assert_eq!(got.as_ref(), b"first");

    // Compare-and-swap on the e-tag: the current one wins, a stale one is a Precondition error.
    let current = UpdateVersion {
        e_tag: first.e_tag.clone(),
        version: None,
    };
    store
        .put_opts(
            &marker,
            PutPayload::from_static(b"updated"),
            PutMode::Update(current.clone()).into(),
        )
        .await
        .expect("update with the current e-tag");
    match store
        .put_opts(
            &marker,
            PutPayload::from_static(b"stale"),
            PutMode::Update(current).into(),
        )
        .await
    {
        Err(object_store::Error::Precondition { .. }) => {}
        other => panic!("update with a stale e-tag: expected Precondition, got {other:?}"),
    }
    let got = store
        .get(&marker)
        .await
        .expect("get")
        .bytes()
        .await
        .expect("body");
    assert_eq!(got.as_ref(), b"updated");

    // 16 concurrent creates of one key: exactly one winner, whose body is the one stored.
    let race = ObjectPath::from(format!("{prefix}/race.json"));
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let (store, race) = (Arc::clone(&store), race.clone());
            tokio::spawn(async move {
                let r = store
                    .put_opts(
                        &race,
                        PutPayload::from(format!("writer-{i}").into_bytes()),
                        PutMode::Create.into(),
                    )
                    .await;
                (i, r)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for t in tasks {
        let (i, r) = t.await.expect("task");
        match r {
            Ok(_) => winners.push(i),
            Err(object_store::Error::AlreadyExists { .. }) => {}
            Err(e) => panic!("writer {i}: unexpected error {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let got = store
        .get(&race)
        .await
        .expect("get")
        .bytes()
        .await
        .expect("body");
    assert_eq!(got.as_ref(), format!("writer-{}", winners[0]).as_bytes());

    // Listing sees exactly the three objects; then clean up.
    let listed: BTreeSet<String> = store
        .list(Some(&ObjectPath::from(prefix.as_str())))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .expect("list");
    assert_eq!(
        listed,
        BTreeSet::from([plain.to_string(), marker.to_string(), race.to_string()])
    );
    for p in [&plain, &marker, &race] {
        store.delete(p).await.expect("delete");
    }
}
