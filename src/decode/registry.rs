//! Writer schemas from a Confluent-compatible schema registry, by the id each Avro message carries.
//!
//! Lookups are cached for the life of the process: an id names one immutable schema. "No such id" is
//! cached too (a message cannot name a schema registered after it was written), so a stream of messages
//! with a bad id costs one request. Transport errors and 5xx answers are not cached: the caller waits
//! and asks again, so a registry outage delays messages and never drops them.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::ResolvedSchema;
use serde::Deserialize;

use crate::config::SchemaRegistryConfig;

/// A parsed writer schema with its names resolved, ready to read datums.
pub struct WriterSchema {
    pub id: u32,
    pub schema: &'static Schema,
    /// Named types, for references inside the schema.
    pub names: ResolvedSchema<'static>,
    pub reader: GenericDatumReader<'static>,
    /// The schema compiled for reading datums straight into fields; `None` for the few types only
    /// the value tree reads.
    pub plan: Option<super::avro::Plan>,
}

/// What the registry said about one id.
#[derive(Clone)]
pub enum Lookup {
    Found(Arc<WriterSchema>),
    /// The registry does not know the id (HTTP 404 / error 40403).
    Unknown(String),
    /// The registry answered with something that is not a usable Avro schema.
    Invalid(String),
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Worth retrying: the registry is down, slow, or refused the credentials.
    #[error("schema registry unavailable: {0}")]
    Unavailable(String),
}

/// `GET /schemas/ids/{id}` answer.
#[derive(Deserialize)]
struct SchemaById {
    schema: String,
    #[serde(rename = "schemaType", default)]
    schema_type: Option<String>,
}

/// `GET /subjects/{subject}/versions/latest` answer.
#[derive(Deserialize)]
struct SubjectVersion {
    id: u32,
    version: u32,
    schema: String,
    #[serde(rename = "schemaType", default)]
    schema_type: Option<String>,
}

/// Confluent error body.
#[derive(Deserialize)]
struct ErrorBody {
    error_code: Option<i64>,
    message: Option<String>,
}

pub struct Registry {
    http: reqwest::Client,
    base: String,
    auth: Option<(String, Option<String>)>,
    schemas: RwLock<HashMap<u32, Lookup>>,
}

impl Registry {
    pub fn new(cfg: &SchemaRegistryConfig) -> Result<Registry, RegistryError> {
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(5)))
            .build()
            .map_err(|e| RegistryError::Unavailable(format!("http client: {e}")))?;
        Ok(Registry {
            http,
            base: cfg.url.trim_end_matches('/').to_string(),
            auth: cfg
                .username
                .clone()
                .map(|user| (user, cfg.password.clone())),
            schemas: RwLock::new(HashMap::new()),
        })
    }

    /// The cached lookup of `id`, if it was resolved.
    pub fn cached(&self, id: u32) -> Option<Lookup> {
        self.schemas
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }

    /// Put a schema the caller already has into the cache under `id` (benches and tools that carry their
    /// schemas; the registry is not asked for it).
    pub fn preload(&self, id: u32, schema: &str) -> Result<(), apache_avro::Error> {
        let w = parse(id, schema)?;
        self.schemas
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Lookup::Found(Arc::new(w)));
        Ok(())
    }

    /// Make sure `id` is in the cache (found, unknown or invalid). Errs only when the registry could not
    /// answer.
    pub async fn resolve(&self, id: u32) -> Result<(), RegistryError> {
        if self.cached(id).is_some() {
            return Ok(());
        }
        let lookup = self.fetch(id).await?;
        match &lookup {
            Lookup::Found(_) => {
                tracing::info!(schema_id = id, "writer schema loaded from the registry")
            }
            Lookup::Unknown(why) | Lookup::Invalid(why) => {
                tracing::warn!(schema_id = id, reason = %why, "writer schema not usable")
            }
        }
        self.schemas
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, lookup);
        Ok(())
    }

    /// The latest version of `subject` (e.g. `<topic>-value`): (version, its schema); `None` when the
    /// registry has no such subject. Not cached: it changes as schemas are registered.
    pub async fn latest(
        &self,
        subject: &str,
    ) -> Result<Option<(u32, Arc<WriterSchema>)>, RegistryError> {
        let Some((version, id, text)) = self.latest_text(subject).await? else {
            return Ok(None);
        };
        let unavailable = |e: String| RegistryError::Unavailable(format!("subject {subject}: {e}"));
        let w = parse(id, &text)
            .map_err(|e| unavailable(format!("schema does not parse as Avro: {e}")))?;
        Ok(Some((version, Arc::new(w))))
    }

    /// The latest version of `subject` as the registry holds it: (version, schema id, schema text),
    /// custom attributes (`connect.name`, ...) and all.
    pub async fn latest_text(
        &self,
        subject: &str,
    ) -> Result<Option<(u32, u32, String)>, RegistryError> {
        let path = format!(
            "subjects/{}/versions/latest",
            percent_encoding::utf8_percent_encode(subject, percent_encoding::NON_ALPHANUMERIC)
        );
        let (status, body) = self.get(&path).await?;
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let unavailable = |e: String| RegistryError::Unavailable(format!("subject {subject}: {e}"));
        let answer: SubjectVersion =
            serde_json::from_slice(&body).map_err(|e| unavailable(e.to_string()))?;
        if let Some(t) = answer.schema_type.filter(|t| t != "AVRO") {
            return Err(unavailable(format!("a {t} schema, not Avro")));
        }
        Ok(Some((answer.version, answer.id, answer.schema)))
    }

    /// `GET {base}/{path}`: a success or a 404, with the body; errs when the registry cannot be reached
    /// or answers anything else (5xx, refused credentials), which is worth retrying.
    async fn get(&self, path: &str) -> Result<(reqwest::StatusCode, Vec<u8>), RegistryError> {
        let url = format!("{}/{path}", self.base);
        let mut request = self
            .http
            .get(&url)
            .header("Accept", "application/vnd.schemaregistry.v1+json");
        if let Some((user, password)) = &self.auth {
            request = request.basic_auth(user, password.as_ref());
        }
        let unavailable = |e: String| RegistryError::Unavailable(format!("GET {url}: {e}"));
        metrics::counter!("bronze_registry_requests_total").increment(1);
        let response = request.send().await.map_err(|e| {
            metrics::counter!("bronze_registry_errors_total").increment(1);
            unavailable(e.to_string())
        })?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        if !status.is_success() && status != reqwest::StatusCode::NOT_FOUND {
            metrics::counter!("bronze_registry_errors_total").increment(1);
            let text = String::from_utf8_lossy(&body);
            return Err(unavailable(format!(
                "HTTP {status}: {}",
                text.chars().take(200).collect::<String>()
            )));
        }
        Ok((status, body.to_vec()))
    }

    async fn fetch(&self, id: u32) -> Result<Lookup, RegistryError> {
        let (status, body) = self.get(&format!("schemas/ids/{id}")).await?;
        if status == reqwest::StatusCode::NOT_FOUND {
            let detail = serde_json::from_slice::<ErrorBody>(&body)
                .ok()
                .map(|b| {
                    format!(
                        "{} (error {})",
                        b.message.unwrap_or_default(),
                        b.error_code.unwrap_or(404)
                    )
                })
                .unwrap_or_else(|| "404".to_string());
            return Ok(Lookup::Unknown(format!(
                "schema id {id} is not in the registry: {detail}"
            )));
        }
        let answer: SchemaById = match serde_json::from_slice(&body) {
            Ok(a) => a,
            Err(e) => {
                return Ok(Lookup::Invalid(format!(
                    "schema id {id}: registry answer is not a schema: {e}"
                )));
            }
        };
        if let Some(t) = answer.schema_type.filter(|t| t != "AVRO") {
            return Ok(Lookup::Invalid(format!(
                "schema id {id} is a {t} schema, not Avro"
            )));
        }
        Ok(match parse(id, &answer.schema) {
            Ok(w) => Lookup::Found(Arc::new(w)),
            Err(e) => Lookup::Invalid(format!("schema id {id} does not parse as Avro: {e}")),
        })
    }
}

/// Parse and resolve a writer schema.
pub fn parse(id: u32, text: &str) -> Result<WriterSchema, apache_avro::Error> {
    // Leaked on purpose: readers borrow the schema, an id's schema never changes, and a process meets a
    // bounded number of ids, each parsed once.
    let schema: &'static Schema = Box::leak(Box::new(Schema::parse_str(text)?));
    let names = ResolvedSchema::try_from(schema)?;
    let reader = GenericDatumReader::builder(schema)
        .resolved_writer_schemata(names.clone())
        .build()?;
    let plan = super::avro::Plan::compile(schema, &names).ok();
    Ok(WriterSchema {
        id,
        schema,
        names,
        reader,
        plan,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::extract::{Path, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::get;

    use super::*;

    const SCHEMA: &str =
        r#"{"type": "record", "name": "R", "fields": [{"name": "a", "type": "int"}]}"#;

    /// GET /schemas/ids/{id} as the Confluent API answers it, behind basic auth `u:p` ("dTpw").
    async fn schema_by_id(
        State(hits): State<Arc<AtomicUsize>>,
        Path(id): Path<u32>,
        headers: HeaderMap,
    ) -> (StatusCode, String) {
        hits.fetch_add(1, Ordering::SeqCst);
        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Basic dTpw") {
            let body = r#"{"error_code": 40101, "message": "Unauthorized"}"#;
            return (StatusCode::UNAUTHORIZED, body.into());
        }
        match id {
            7 => (
                StatusCode::OK,
                serde_json::json!({ "schema": SCHEMA }).to_string(),
            ),
            8 => (
                StatusCode::OK,
                r#"{"schema": "{\"type\": \"nope\"}"}"#.into(),
            ),
            9 => (
                StatusCode::OK,
                r#"{"schema": "{}", "schemaType": "PROTOBUF"}"#.into(),
            ),
            55 => (StatusCode::INTERNAL_SERVER_ERROR, "{}".into()),
            _ => {
                let body = r#"{"error_code": 40403, "message": "Schema not found"}"#;
                (StatusCode::NOT_FOUND, body.into())
            }
        }
    }

    fn client(url: &str, password: &str) -> Registry {
        Registry::new(&SchemaRegistryConfig {
            url: url.to_string(),
            username: Some("u".into()),
            password: Some(password.into()),
            timeout: Duration::from_secs(2),
            max_backoff: Duration::from_secs(1),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn lookups_are_cached_and_outages_are_not() {
        let hits = Arc::new(AtomicUsize::new(0));
        let app = axum::Router::new()
            .route("/schemas/ids/{id}", get(schema_by_id))
            .with_state(hits.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });

        let r = client(&url, "p");
        r.resolve(7).await.unwrap();
        r.resolve(7).await.unwrap();
        assert!(matches!(r.cached(7), Some(Lookup::Found(w)) if w.id == 7));
        assert_eq!(
            hits.load(Ordering::SeqCst),
            1,
            "the second lookup is served from the cache"
        );
        r.resolve(99).await.unwrap();
        assert!(matches!(r.cached(99), Some(Lookup::Unknown(m)) if m.contains("40403")));
        r.resolve(8).await.unwrap();
        assert!(matches!(r.cached(8), Some(Lookup::Invalid(_))));
        r.resolve(9).await.unwrap();
        assert!(matches!(r.cached(9), Some(Lookup::Invalid(m)) if m.contains("PROTOBUF")));
        // Server errors and refused credentials are retried later, never cached.
        assert!(r.resolve(55).await.is_err());
        assert!(r.cached(55).is_none());
        let wrong = client(&url, "nope");
        assert!(wrong.resolve(7).await.is_err());
        assert!(wrong.cached(7).is_none());
        // Nothing listens here.
        let down = client("http://127.0.0.1:9", "p");
        assert!(down.resolve(7).await.is_err());
    }
}
