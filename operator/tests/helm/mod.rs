//! A small, honest renderer for the subset of Helm's template language the shoal chart
//! uses, so tests can render the chart without `helm`.
//!
//! Supported (and nothing else; anything else is an error, never silently passed through):
//! - `{{ X }}` and the trim markers `{{-` / `-}}`;
//! - values: `.Values.a.b`, `.Release.Name`, `.Release.Namespace`, `.Chart.Version`,
//!   `.Chart.AppVersion`, `.Files.Get "path"`, and string literals;
//! - pipelines through `quote`, `toYaml`, `nindent N`, `indent N`, `default X`;
//! - `if X` / `if not X` / `else` / `end`, with Go template truthiness (false, 0, "",
//!   null, empty list and map are false).
//!
//! `toYaml` sorts map keys, as Helm's (sigs.k8s.io/yaml) does. Output files are put in
//! Helm's install order by kind, each document headed by `# Source: <chart>/templates/<file>`
//! like `helm template`.

use std::collections::BTreeMap;
use std::path::Path;

use serde_yaml_ng::Value;

/// The release a chart is rendered for.
pub struct Release {
    pub name: String,
    pub namespace: String,
}

enum Node {
    Text(String),
    Expr(String),
    If { cond: String, then: Vec<Node>, otherwise: Vec<Node> },
}

/// Renders every template of the chart at `chart` with its values.yaml merged with
/// `overrides`; returns the documents joined as `helm template` prints them.
pub fn render_chart(chart: &Path, release: &Release, overrides: &str) -> Result<String, String> {
    let chart_meta: Value = read_yaml(&chart.join("Chart.yaml"))?;
    let mut values: Value = read_yaml(&chart.join("values.yaml"))?;
    let overrides: Value = serde_yaml_ng::from_str(overrides).map_err(|e| e.to_string())?;
    merge(&mut values, overrides);
    let chart_name = chart_meta["name"].as_str().ok_or("Chart.yaml has no name")?.to_string();
    let ctx = Ctx { values, chart: chart_meta, release, root: chart };

    let mut files: Vec<_> = std::fs::read_dir(chart.join("templates"))
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| e.to_string())?;
        let nodes = parse(&text)?;
        let mut out = String::new();
        ctx.eval_nodes(&nodes, &mut out)?;
        let file_name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        for doc in out.split("\n---\n") {
            let body: String = doc.lines().filter(|l| !l.trim().is_empty()).collect::<Vec<_>>().join("\n");
            let has_content = body.lines().any(|l| !l.trim_start().starts_with('#'));
            if has_content {
                let kind = serde_yaml_ng::from_str::<Value>(&body)
                    .map_err(|e| format!("{file_name} renders invalid YAML: {e}\n{body}"))?["kind"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                docs.push((install_order(&kind), format!("# Source: {chart_name}/templates/{file_name}\n{body}\n")));
            }
        }
    }
    // Helm sorts by kind (stable, so file order stays within a kind).
    docs.sort_by_key(|(order, _)| *order);
    Ok(docs.into_iter().map(|(_, d)| format!("---\n{d}")).collect())
}

/// Helm's InstallOrder for the kinds the chart uses; unknown kinds go last.
fn install_order(kind: &str) -> usize {
    const ORDER: &[&str] = &[
        "Namespace",
        "NetworkPolicy",
        "ResourceQuota",
        "LimitRange",
        "PodSecurityPolicy",
        "PodDisruptionBudget",
        "ServiceAccount",
        "Secret",
        "SecretList",
        "ConfigMap",
        "StorageClass",
        "PersistentVolume",
        "PersistentVolumeClaim",
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleList",
        "ClusterRoleBinding",
        "ClusterRoleBindingList",
        "Role",
        "RoleList",
        "RoleBinding",
        "RoleBindingList",
        "Service",
        "DaemonSet",
        "Pod",
        "ReplicationController",
        "ReplicaSet",
        "Deployment",
    ];
    ORDER.iter().position(|k| *k == kind).unwrap_or(ORDER.len())
}

fn read_yaml(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) if !o.is_null() => *b = o,
        _ => {}
    }
}

/// Splits a template into text and actions, applying trim markers, then nests if/else/end.
fn parse(text: &str) -> Result<Vec<Node>, String> {
    let mut tokens: Vec<(bool, String)> = Vec::new(); // (is_action, content)
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let mut before = rest[..start].to_string();
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or("unclosed {{")?;
        let mut action = &after[..end];
        if let Some(a) = action.strip_prefix('-') {
            before = before.trim_end().to_string();
            action = a;
        }
        let mut next = &after[end + 2..];
        if let Some(a) = action.strip_suffix('-') {
            action = a;
            next = next.trim_start();
        }
        tokens.push((false, before));
        tokens.push((true, action.trim().to_string()));
        rest = next;
    }
    tokens.push((false, rest.to_string()));
    let mut iter = tokens.into_iter();
    let (nodes, end) = nest(&mut iter)?;
    match end {
        None => Ok(nodes),
        Some(e) => Err(format!("unexpected {{{{ {e} }}}}")),
    }
}

fn nest(tokens: &mut impl Iterator<Item = (bool, String)>) -> Result<(Vec<Node>, Option<String>), String> {
    let mut nodes = Vec::new();
    while let Some((is_action, content)) = tokens.next() {
        if !is_action {
            nodes.push(Node::Text(content));
        } else if let Some(cond) = content.strip_prefix("if ") {
            let (then, end) = nest(tokens)?;
            let otherwise = match end.as_deref() {
                Some("end") => Vec::new(),
                Some("else") => match nest(tokens)? {
                    (nodes, Some(e)) if e == "end" => nodes,
                    _ => return Err("else without end".into()),
                },
                _ => return Err(format!("if {cond} without end")),
            };
            nodes.push(Node::If { cond: cond.trim().to_string(), then, otherwise });
        } else if content == "end" || content == "else" {
            return Ok((nodes, Some(content)));
        } else if content.starts_with("/*") {
            // A template comment.
        } else {
            nodes.push(Node::Expr(content));
        }
    }
    Ok((nodes, None))
}

struct Ctx<'a> {
    values: Value,
    chart: Value,
    release: &'a Release,
    root: &'a Path,
}

impl Ctx<'_> {
    fn eval_nodes(&self, nodes: &[Node], out: &mut String) -> Result<(), String> {
        for node in nodes {
            match node {
                Node::Text(t) => out.push_str(t),
                Node::Expr(e) => out.push_str(&to_text(&self.pipeline(e)?)),
                Node::If { cond, then, otherwise } => {
                    let (negate, expr) = match cond.strip_prefix("not ") {
                        Some(e) => (true, e),
                        None => (false, cond.as_str()),
                    };
                    let yes = truthy(&self.pipeline(expr)?) != negate;
                    self.eval_nodes(if yes { then } else { otherwise }, out)?;
                }
            }
        }
        Ok(())
    }

    fn pipeline(&self, expr: &str) -> Result<Value, String> {
        let mut stages: Vec<String> = expr.split('|').map(|s| s.trim().to_string()).collect();
        // `f args X` as the first stage means `X | f args` (e.g. `toYaml .Values.r`).
        let first = stages.remove(0);
        let (head, piped) = match first.rsplit_once(' ') {
            Some((f, arg)) if !first.starts_with('"') && !first.starts_with(".Files.Get") => {
                (arg.to_string(), Some(f.to_string()))
            }
            _ => (first.clone(), None),
        };
        if let Some(f) = piped {
            stages.insert(0, f);
        }
        let mut value = self.term(&head)?;
        for stage in &stages {
            let words: Vec<&str> = stage.split_whitespace().collect();
            value = match words.as_slice() {
                ["quote"] => Value::String(format!("{:?}", to_text(&value))),
                ["toYaml"] => Value::String(to_yaml(&value)?),
                ["nindent", n] => {
                    Value::String(format!("\n{}", indent(&to_text(&value), n.parse().map_err(|_| "bad nindent")?)))
                }
                ["indent", n] => Value::String(indent(&to_text(&value), n.parse().map_err(|_| "bad indent")?)),
                ["default", fallback] => {
                    if truthy(&value) {
                        value
                    } else {
                        self.term(fallback)?
                    }
                }
                _ => return Err(format!("unsupported pipeline stage {stage:?}")),
            };
        }
        Ok(value)
    }

    fn term(&self, term: &str) -> Result<Value, String> {
        if let Some(path) = term.strip_prefix(".Files.Get ") {
            let path = path.trim().trim_matches('"');
            let text = std::fs::read_to_string(self.root.join(path)).map_err(|e| format!("{path}: {e}"))?;
            return Ok(Value::String(text));
        }
        if term.starts_with('"') && term.ends_with('"') && term.len() >= 2 {
            return Ok(Value::String(term[1..term.len() - 1].to_string()));
        }
        let lookup = |root: &Value, path: &str| {
            path.split('.')
                .filter(|s| !s.is_empty())
                .fold(root.clone(), |v, key| v.get(key).cloned().unwrap_or(Value::Null))
        };
        match term {
            ".Release.Name" => Ok(Value::String(self.release.name.clone())),
            ".Release.Namespace" => Ok(Value::String(self.release.namespace.clone())),
            ".Chart.Version" => Ok(lookup(&self.chart, "version")),
            ".Chart.AppVersion" => Ok(lookup(&self.chart, "appVersion")),
            t if t.starts_with(".Values.") => Ok(lookup(&self.values, &t[".Values.".len()..])),
            t => Err(format!("unsupported term {t:?}")),
        }
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Sequence(s) => !s.is_empty(),
        Value::Mapping(m) => !m.is_empty(),
        Value::Tagged(_) => true,
    }
}

/// How Go templates print a value.
fn to_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => serde_yaml_ng::to_string(other).unwrap_or_default().trim_end().to_string(),
    }
}

/// Helm's toYaml: keys sorted, no trailing newline; `{}` and `[]` for empty collections.
fn to_yaml(v: &Value) -> Result<String, String> {
    let json: serde_json::Value = serde_json::to_value(v).map_err(|e| e.to_string())?;
    let sorted: BTreeMap<String, serde_json::Value> = match &json {
        serde_json::Value::Object(m) => m.clone().into_iter().collect(),
        _ => return Ok(serde_yaml_ng::to_string(&json).map_err(|e| e.to_string())?.trim_end().to_string()),
    };
    Ok(serde_yaml_ng::to_string(&sorted).map_err(|e| e.to_string())?.trim_end().to_string())
}

fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines().map(|l| format!("{pad}{l}")).collect::<Vec<_>>().join("\n")
}

#[test]
fn renderer_handles_the_supported_idioms() {
    let release = Release { name: "r".into(), namespace: "ns".into() };
    let dir = std::env::temp_dir().join(format!("shoal-helm-test-{}", std::process::id()));
    let _ = std::fs::create_dir_all(dir.join("templates"));
    std::fs::write(dir.join("Chart.yaml"), "name: c\nversion: 1.0.0\nappVersion: \"2.0\"\n").expect("write");
    std::fs::write(dir.join("values.yaml"), "a: {x: 1, b: true}\nempty: \"\"\nres: {z: 1, a: 2}\n").expect("write");
    std::fs::write(
        dir.join("templates/t.yaml"),
        "kind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-{{ .Values.empty | default .Chart.AppVersion }}\n  \
         v: {{ .Values.a.x | quote }}\n{{- if not .Values.a.b }}\n  no: 1\n{{- else }}\n  yes: 1\n{{- end }}\n  r:\n    {{- toYaml .Values.res | nindent 4 }}\n",
    )
    .expect("write");
    let out = render_chart(&dir, &release, "{}").expect("renders");
    assert_eq!(out, "---\n# Source: c/templates/t.yaml\nkind: ConfigMap\nmetadata:\n  name: r-2.0\n  v: \"1\"\n  yes: 1\n  r:\n    a: 2\n    z: 1\n");
    let _ = std::fs::remove_dir_all(&dir);
}
