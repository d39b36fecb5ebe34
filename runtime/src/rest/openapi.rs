//! `GET /openapi.json`: an OpenAPI 3.1 document generated from the route
//! table ([`super::endpoints`]) and the JSON Schemas of the request and
//! response types ([`super::types`]), so it cannot drift from the server:
//! the same table builds the router, and the same types are (de)serialised
//! by the handlers.

use schemars::generate::{SchemaGenerator, SchemaSettings};
use serde_json::{json, Map, Value};

use super::{endpoints, ParamIn};

/// The OpenAPI document of the REST API.
pub fn document() -> Value {
    let mut settings = SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas".into();
    settings.meta_schema = None;
    let mut gen = SchemaGenerator::new(settings);
    let mut paths: Map<String, Value> = Map::new();
    for ep in endpoints() {
        let d = ep.doc;
        let mut op = Map::new();
        op.insert("summary".into(), json!(d.summary));
        op.insert("operationId".into(), json!(d.operation_id));
        let params: Vec<Value> = d
            .params
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "in": match p.location { ParamIn::Path => "path", ParamIn::Query => "query" },
                    "required": matches!(p.location, ParamIn::Path),
                    "description": p.description,
                    "schema": p.schema.json(),
                })
            })
            .collect();
        if !params.is_empty() {
            op.insert("parameters".into(), Value::Array(params));
        }
        if let Some(req) = d.request {
            let schema = req(&mut gen);
            op.insert(
                "requestBody".into(),
                json!({
                    "required": true,
                    "content": {
                        "application/json": { "schema": schema },
                        "application/yaml": { "schema": schema },
                    }
                }),
            );
        }
        let mut responses = Map::new();
        let mut content = Map::new();
        for (i, media) in d.response_media.iter().enumerate() {
            let schema = match d.response {
                Some(resp) if i == 0 => json!({ "schema": resp(&mut gen) }),
                _ => json!({}),
            };
            content.insert(media.to_string(), schema);
        }
        for code in d.success {
            responses.insert(code.to_string(), json!({ "description": "success", "content": content }));
        }
        let error = gen.subschema_for::<super::types::ErrorBody>();
        for code in &d.errors {
            responses.insert(
                code.to_string(),
                json!({ "description": "error", "content": { "application/json": { "schema": error } } }),
            );
        }
        op.insert("responses".into(), Value::Object(responses));
        if d.authenticated {
            // The cluster token is required (only a head run with
            // --insecure-no-auth leaves the API open).
            op.insert("security".into(), json!([{ "bearer": [] }]));
        }
        let entry = paths.entry(d.path.to_string()).or_insert_with(|| json!({}));
        if let Some(m) = entry.as_object_mut() {
            m.insert(d.method.to_ascii_lowercase(), Value::Object(op));
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "shoal head REST API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Jobs, the state API (tasks, nodes, cluster) and result objects of a shoal cluster.",
        },
        "paths": paths,
        "components": {
            "schemas": gen.take_definitions(true),
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_and_every_referenced_schema_is_in_the_document() {
        let doc = document();
        for ep in endpoints() {
            let d = ep.doc;
            assert!(doc["paths"][d.path][d.method.to_ascii_lowercase()].is_object(), "{} {}", d.method, d.path);
        }
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        for (i, _) in text.match_indices("#/components/schemas/") {
            let rest = &text[i + "#/components/schemas/".len()..];
            let name: String = rest.chars().take_while(|c| *c != '"').collect();
            assert!(schemas.contains_key(&name), "missing schema {name}");
        }
        assert!(schemas.contains_key("Job"));
    }
}
