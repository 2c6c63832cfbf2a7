//! Reading manifests for `apply -f` and `delete -f`: files, directories or stdin; YAML
//! streams (`---`) and JSON; `List` kinds flattened; every object checked for `apiVersion`,
//! `kind` and `metadata.name`, with the file and document named on error.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::Value;

/// One object read from a manifest, with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// The file (`-` for stdin).
    pub source: String,
    /// 1-based document index in that file.
    pub document: usize,
    /// The object.
    pub object: Value,
}

impl Manifest {
    /// `apiVersion`.
    pub fn api_version(&self) -> &str {
        self.object["apiVersion"].as_str().unwrap_or("")
    }

    /// `kind`.
    pub fn kind(&self) -> &str {
        self.object["kind"].as_str().unwrap_or("")
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        self.object["metadata"]["name"].as_str().unwrap_or("")
    }

    /// `metadata.namespace`, if set.
    pub fn namespace(&self) -> Option<&str> {
        self.object["metadata"]["namespace"]
            .as_str()
            .filter(|n| !n.is_empty())
    }

    /// `FILE (document N)`, for messages.
    pub fn origin(&self) -> String {
        format!("{} (document {})", self.source, self.document)
    }
}

/// Reads every `-f` argument (file, directory of `.yaml`/`.yml`/`.json`, or `-`).
pub fn read_all(paths: &[PathBuf], recursive: bool) -> Result<Vec<Manifest>> {
    let mut manifests = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("failed to read the manifests from stdin")?;
            manifests.extend(parse("-", &text, false)?);
            continue;
        }
        for file in files_of(path, recursive)? {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("failed to read {}", file.display()))?;
            let is_json = file.extension().is_some_and(|e| e == "json");
            manifests.extend(parse(&file.display().to_string(), &text, is_json)?);
        }
    }
    if manifests.is_empty() {
        bail!("no objects passed to apply: the files named by -f hold no documents");
    }
    Ok(manifests)
}

fn files_of(path: &Path, recursive: bool) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("the path \"{}\" does not exist", path.display()))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("failed to read the directory {}", path.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("failed to read the directory {}", path.display()))?;
    entries.sort();
    let mut files = Vec::new();
    for entry in entries {
        if entry.is_dir() {
            if recursive {
                files.extend(files_of(&entry, true)?);
            }
        } else if entry
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        {
            files.push(entry);
        }
    }
    Ok(files)
}

/// Parses one file's text: a YAML stream (JSON is YAML too) or, for `.json`, a JSON stream.
pub fn parse(source: &str, text: &str, is_json: bool) -> Result<Vec<Manifest>> {
    let mut documents = Vec::new();
    if is_json {
        for (i, value) in serde_json::Deserializer::from_str(text)
            .into_iter::<Value>()
            .enumerate()
        {
            let value =
                value.with_context(|| format!("{source} (document {}): invalid JSON", i + 1))?;
            documents.push(value);
        }
    } else {
        for (i, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let value = Value::deserialize(document)
                .with_context(|| format!("{source} (document {}): invalid YAML", i + 1))?;
            documents.push(value);
        }
    }
    let mut manifests = Vec::new();
    for (i, value) in documents.into_iter().enumerate() {
        let document = i + 1;
        if value.is_null() {
            continue; // an empty document (`---` at the end, comments only)
        }
        let origin = format!("{source} (document {document})");
        if !value.is_object() {
            bail!(
                "{origin}: expected an object with apiVersion, kind and metadata, found {}",
                type_name(&value)
            );
        }
        let kind = value["kind"].as_str().unwrap_or("");
        if kind.ends_with("List") && value.get("items").is_some() {
            let Some(items) = value["items"].as_array() else {
                bail!("{origin}: field \"items\" of the {kind} must be a list");
            };
            for (j, item) in items.iter().enumerate() {
                check(item).with_context(|| format!("{origin}: items[{j}]"))?;
                manifests.push(Manifest {
                    source: source.to_owned(),
                    document,
                    object: item.clone(),
                });
            }
            continue;
        }
        check(&value).with_context(|| origin.clone())?;
        manifests.push(Manifest {
            source: source.to_owned(),
            document,
            object: value,
        });
    }
    Ok(manifests)
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Every object needs `apiVersion`, `kind` and `metadata.name` (string fields).
fn check(object: &Value) -> Result<()> {
    let mut missing = Vec::new();
    for (field, value) in [
        ("apiVersion", object.get("apiVersion")),
        ("kind", object.get("kind")),
        (
            "metadata.name",
            object.get("metadata").and_then(|m| m.get("name")),
        ),
    ] {
        match value {
            Some(Value::String(s)) if !s.is_empty() => {}
            Some(Value::String(_)) | None | Some(Value::Null) => {
                missing.push(format!("field \"{field}\" is not set"))
            }
            Some(other) => missing.push(format!(
                "field \"{field}\" must be a string, found {}",
                type_name(other)
            )),
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        bail!("{}", missing.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_streams_lists_and_json() {
        let text = "\
apiVersion: v1
kind: ConfigMap
metadata: {name: a}
---
# only a comment
---
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Service, metadata: {name: b}}
- {apiVersion: apps/v1, kind: Deployment, metadata: {name: c, namespace: prod}}
";
        let found = parse("app.yaml", text, false).unwrap();
        let names: Vec<(&str, &str, usize)> = found
            .iter()
            .map(|m| (m.kind(), m.name(), m.document))
            .collect();
        assert_eq!(
            names,
            vec![
                ("ConfigMap", "a", 1),
                ("Service", "b", 3),
                ("Deployment", "c", 3)
            ]
        );
        assert_eq!(found[2].namespace(), Some("prod"));
        assert_eq!(found[2].api_version(), "apps/v1");

        let json = r#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}
                      {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "y"}}"#;
        let found = parse("ns.json", json, true).unwrap();
        assert_eq!(
            found.iter().map(Manifest::name).collect::<Vec<_>>(),
            vec!["x", "y"]
        );
    }

    #[test]
    fn errors_name_the_file_document_and_field() {
        let text =
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\nkind: Pod\nmetadata: {}\n";
        let err = format!("{:#}", parse("app.yaml", text, false).unwrap_err());
        assert_eq!(
            err,
            "app.yaml (document 2): field \"apiVersion\" is not set, field \"metadata.name\" is not set"
        );

        let err = format!("{:#}", parse("bad.yaml", "a: [1,\n", false).unwrap_err());
        assert!(
            err.starts_with("bad.yaml (document 1): invalid YAML"),
            "{err}"
        );

        let err = format!("{:#}", parse("s.yaml", "- 1\n- 2\n", false).unwrap_err());
        assert_eq!(
            err,
            "s.yaml (document 1): expected an object with apiVersion, kind and metadata, found a list"
        );

        let err = format!(
            "{:#}",
            parse(
                "k.yaml",
                "apiVersion: v1\nkind: 3\nmetadata: {name: a}\n",
                false
            )
            .unwrap_err()
        );
        assert_eq!(
            err,
            "k.yaml (document 1): field \"kind\" must be a string, found a number"
        );

        let list =
            "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Pod, metadata: {}}\n";
        let err = format!("{:#}", parse("l.yaml", list, false).unwrap_err());
        assert_eq!(
            err,
            "l.yaml (document 1): items[0]: field \"metadata.name\" is not set"
        );
    }

    #[test]
    fn directories_hold_manifest_files_in_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("b.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("a.json"),
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a"}}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a manifest").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(
            dir.path().join("sub/c.yml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n",
        )
        .unwrap();
        let names = |recursive| {
            read_all(&[dir.path().to_path_buf()], recursive)
                .unwrap()
                .iter()
                .map(|m| m.name().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(false), vec!["a", "b"]);
        assert_eq!(names(true), vec!["a", "b", "c"]);
        let err = read_all(&[dir.path().join("missing.yaml")], false).unwrap_err();
        assert!(
            err.to_string().contains("missing.yaml\" does not exist"),
            "{err}"
        );
    }
}
