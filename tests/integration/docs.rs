//! The configuration reference, `docs/configuration.md`, and the config types agree: every key
//! the docs list exists and takes its documented default, and every key the config accepts is
//! documented.
//!
//! The docs side is read from the key tables: `| Key | Default | Meaning |` under a
//! `` ### `[section]` `` (or `` ### `[[section]]` ``) heading, one row per key. The code side is
//! read from the source text of the config structs in `src/` (the fields of `Config` are the
//! sections, the fields of each section's struct its keys, minus `#[serde(skip)]` fields), so a
//! key added to a struct without docs fails here. Both directions are then checked against the
//! real parser and the real binary: each documented default, written into a config, must give
//! exactly the config an empty file gives; a file with every documented default must start;
//! and an unknown key must be refused in every section, which is what makes the struct fields
//! the whole set of accepted keys.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use switchboard::config::Config;

/// One row of a key table in the docs.
#[derive(Debug)]
struct DocumentedKey {
    key: String,
    /// The Default cell: a TOML value in backticks, or words (`unset`, `required`, ...).
    default: String,
}

/// One `### [section]` of the docs with its key table.
#[derive(Debug, Default)]
struct DocumentedSection {
    /// `[[routes]]` rather than `[server]`.
    array: bool,
    keys: Vec<DocumentedKey>,
}

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// The key tables of `docs/configuration.md`, by section name.
fn documented_sections() -> BTreeMap<String, DocumentedSection> {
    let path = repo_file("docs/configuration.md");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut sections: BTreeMap<String, DocumentedSection> = BTreeMap::new();
    let mut section: Option<String> = None;
    let mut in_table = false;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        let at = || format!("docs/configuration.md:{}", n + 1);
        if line.starts_with('#') {
            in_table = false;
            section = line
                .strip_prefix("### `[")
                .and_then(|rest| rest.strip_suffix("]`"))
                .map(|name| {
                    let array = name.starts_with('[') && name.ends_with(']');
                    let name = name.trim_matches(|c| c == '[' || c == ']').to_owned();
                    let entry = sections.entry(name.clone()).or_default();
                    entry.array = array;
                    name
                });
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() >= 4 && cells[1..4] == ["Key", "Default", "Meaning"] {
            let name = section
                .clone()
                .unwrap_or_else(|| panic!("{}: a key table outside a section heading", at()));
            assert!(
                sections[&name].keys.is_empty(),
                "{}: a second key table for [{name}]",
                at()
            );
            in_table = true;
            continue;
        }
        if !in_table {
            continue;
        }
        if !line.starts_with('|') {
            in_table = false;
            continue;
        }
        if cells.get(1).is_some_and(|c| c.starts_with("---")) {
            continue;
        }
        let key = cells
            .get(1)
            .and_then(|c| c.strip_prefix('`'))
            .and_then(|c| c.strip_suffix('`'))
            .filter(|k| !k.is_empty() && !k.contains('`'))
            .unwrap_or_else(|| panic!("{}: a key table row whose key is not `name`", at()));
        let default = cells
            .get(2)
            .unwrap_or_else(|| panic!("{}: a key table row without a default", at()));
        let name = section.clone().expect("a table has a section");
        sections
            .get_mut(&name)
            .expect("section entry")
            .keys
            .push(DocumentedKey {
                key: key.to_owned(),
                default: (*default).to_owned(),
            });
    }
    sections
}

/// The text of every `.rs` file under `src/` (the config may live in any module).
fn source_text() -> String {
    fn walk(dir: &Path, out: &mut String) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
            .map(|entry| entry.expect("dir entry").path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push_str(&std::fs::read_to_string(&path).expect("read source"));
                out.push('\n');
            }
        }
    }
    let mut text = String::new();
    walk(&repo_file("src"), &mut text);
    text
}

/// One field of a config struct, as written in the source.
struct Field {
    name: String,
    ty: String,
    /// Its attributes, e.g. `#[serde(default)]`.
    attributes: Vec<String>,
}

/// The fields of `struct <name> { ... }` in the sources (exactly one such struct must exist).
fn struct_fields(source: &str, name: &str) -> Vec<Field> {
    let opening = format!("struct {name} {{");
    let starts: Vec<usize> = source.match_indices(&opening).map(|(i, _)| i).collect();
    assert_eq!(
        starts.len(),
        1,
        "expected exactly one `{opening}` in src/, found {}",
        starts.len()
    );
    let body = &source[starts[0] + opening.len()..];
    let mut fields = Vec::new();
    let mut attributes: Vec<String> = Vec::new();
    let mut open_attribute: Option<String> = None;
    for line in body.lines() {
        let line = line.trim();
        if let Some(attribute) = open_attribute.as_mut() {
            attribute.push_str(line);
            if line.ends_with(']') {
                attributes.push(open_attribute.take().expect("open attribute"));
            }
            continue;
        }
        if line == "}" {
            return fields;
        }
        if line.is_empty() || line.starts_with("//") {
            continue;
        }
        if line.starts_with("#[") {
            if line.ends_with(']') {
                attributes.push(line.to_owned());
            } else {
                open_attribute = Some(line.to_owned());
            }
            continue;
        }
        let declaration = line
            .trim_start_matches("pub(crate) ")
            .trim_start_matches("pub ");
        let (field, ty) = declaration
            .split_once(':')
            .unwrap_or_else(|| panic!("struct {name}: cannot read the field line `{line}`"));
        fields.push(Field {
            name: field.trim().to_owned(),
            ty: ty.trim().trim_end_matches(',').trim().to_owned(),
            attributes: std::mem::take(&mut attributes),
        });
    }
    panic!("struct {name}: no closing `}}` found");
}

/// Whether a field is a config key, judged by its serde attributes; attributes that would
/// make the key differ from the field name are refused, so this test never guesses.
fn is_key(owner: &str, field: &Field) -> bool {
    let serde: Vec<&String> = field
        .attributes
        .iter()
        .filter(|a| a.starts_with("#[serde("))
        .collect();
    for attribute in &serde {
        for word in ["rename", "alias", "flatten"] {
            assert!(
                !attribute.contains(word),
                "{owner}.{}: `{attribute}`: this test reads keys from field names and does not \
                 understand `{word}`; teach it",
                field.name
            );
        }
    }
    !serde
        .iter()
        .any(|a| a.contains("(skip)") || a.contains("skip_deserializing") || a.contains("skip,"))
}

/// The sections the config accepts, each with whether it is an array of tables, its
/// struct's keys, and the type of each key.
fn sections_in_code() -> BTreeMap<String, (bool, BTreeMap<String, String>)> {
    let source = source_text();
    struct_fields(&source, "Config")
        .into_iter()
        .filter(|field| is_key("Config", field))
        .map(|section| {
            let (array, ty) = match section
                .ty
                .strip_prefix("Vec<")
                .and_then(|t| t.strip_suffix('>'))
            {
                Some(inner) => (true, inner.to_owned()),
                None => (false, section.ty.clone()),
            };
            let keys = struct_fields(&source, &ty)
                .into_iter()
                .filter(|field| is_key(&ty, field))
                .map(|field| (field.name, field.ty))
                .collect();
            (section.name, (array, keys))
        })
        .collect()
}

/// The TOML header of a section, with what a `[[routes]]` entry needs to be one.
fn section_header(name: &str, array: bool) -> String {
    if array {
        format!("[[{name}]]\npath = \"/docs-test\"\ndialect = \"raw\"\n")
    } else {
        format!("[{name}]\n")
    }
}

/// The documented default as a TOML value, when the Default cell is one (`` `5000` ``).
fn literal_default(key: &DocumentedKey) -> Option<&str> {
    key.default
        .strip_prefix('`')
        .and_then(|d| d.strip_suffix('`'))
        .filter(|d| !d.contains('`'))
}

fn parsed(text: &str) -> String {
    match Config::parse(text, "docs test") {
        Ok(config) => format!("{config:?}"),
        Err(e) => format!("refused: {e}"),
    }
}

/// What `changed` says that `base` does not: the fields of a config's debug text that differ,
/// or the whole text when it is an error.
fn difference(base: &str, changed: &str) -> String {
    if changed.starts_with("refused") {
        return changed.to_owned();
    }
    let fields = |text: &str| -> Vec<String> {
        text.split([',', '{', '}'])
            .map(|part| part.trim().to_owned())
            .collect()
    };
    let base = fields(base);
    let changed: Vec<String> = fields(changed)
        .into_iter()
        .filter(|part| !base.contains(part))
        .collect();
    changed.join(", ")
}

/// Run the binary with `config` until it exits (10 s at most); its exit code and stderr.
fn exit_of(config: &str, args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("--config")
        .arg(&path)
        .args(args)
        .env("RUST_LOG", "error")
        .env_remove("SWITCHBOARD_PUSH_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn switchboard");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("switchboard did not exit within 10 s with config:\n{config}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use std::io::Read;
        let _ = pipe.read_to_string(&mut stderr);
    }
    (status.code(), stderr)
}

#[test]
fn every_config_key_is_documented_and_every_documented_key_exists() {
    let docs = documented_sections();
    let code = sections_in_code();
    let mut problems = Vec::new();

    let documented: BTreeSet<&String> = docs.keys().collect();
    let accepted: BTreeSet<&String> = code.keys().collect();
    for missing in accepted.difference(&documented) {
        problems.push(format!(
            "section [{missing}] is in the config but has no key table in docs/configuration.md"
        ));
    }
    for stray in documented.difference(&accepted) {
        problems.push(format!(
            "docs/configuration.md documents section [{stray}], which the config does not have"
        ));
    }
    for (name, (array, keys)) in &code {
        let Some(section) = docs.get(name) else {
            continue;
        };
        if section.array != *array {
            problems.push(format!(
                "[{name}] is documented as {} but the config has it as {}",
                if section.array {
                    "[[array]]"
                } else {
                    "[table]"
                },
                if *array { "[[array]]" } else { "[table]" },
            ));
        }
        let documented: BTreeSet<&str> = section.keys.iter().map(|k| k.key.as_str()).collect();
        if documented.len() != section.keys.len() {
            problems.push(format!(
                "[{name}] lists a key twice in docs/configuration.md"
            ));
        }
        for (key, ty) in keys {
            if !documented.contains(key.as_str()) {
                problems.push(format!(
                    "{name}.{key} is in the config but not in docs/configuration.md"
                ));
            } else if let Some(doc) = section.keys.iter().find(|k| &k.key == key) {
                if doc.default == "unset" && !ty.starts_with("Option<") {
                    problems.push(format!(
                        "{name}.{key} is documented as unset by default, but its type `{ty}` always has a value"
                    ));
                }
            }
        }
        for key in documented {
            if !keys.contains_key(key) {
                problems.push(format!(
                    "docs/configuration.md documents {name}.{key}, which the config does not have"
                ));
            }
        }
    }

    // Each documented default, written out, is accepted and changes nothing: it is the default.
    let mut literal_keys = 0;
    for (name, section) in &docs {
        let header = section_header(name, section.array);
        let base = parsed(&header);
        for key in &section.keys {
            let Some(value) = literal_default(key) else {
                continue;
            };
            literal_keys += 1;
            let with_default = parsed(&format!("{header}{} = {value}\n", key.key));
            if with_default != base {
                problems.push(format!(
                    "{name}.{} = {value} (the documented default) is not the default: {}",
                    key.key,
                    difference(&base, &with_default)
                ));
            }
        }
    }
    assert!(
        literal_keys >= 30,
        "only {literal_keys} documented defaults were checked: did the table format change?"
    );

    assert!(
        problems.is_empty(),
        "docs/configuration.md and the config disagree:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn the_binary_starts_with_every_documented_default_and_refuses_unknown_config_keys() {
    let docs = documented_sections();
    let mut file = String::new();
    for (name, section) in &docs {
        file.push_str(&section_header(name, section.array));
        for key in &section.keys {
            if let Some(value) = literal_default(key) {
                file.push_str(&format!("{} = {value}\n", key.key));
            }
        }
        file.push('\n');
    }
    // The listen port is held here: a config that passed would fail to bind (exit 1) instead
    // of running; a refused config exits 2 before binding.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = held.local_addr().unwrap().to_string();
    let (code, stderr) = exit_of(
        &file,
        &["--listen", &listen, "--push-listen", "127.0.0.1:0"],
    );
    assert_eq!(
        code,
        Some(1),
        "a config of every documented default was not accepted:\n{file}\nstderr: {stderr}"
    );
    assert!(
        stderr.contains("server.listen"),
        "expected the bind failure on server.listen, got: {stderr}"
    );

    // Every section refuses a key it does not know, so the keys above are all it accepts.
    for (name, section) in &docs {
        let config = format!(
            "{}docs_test_unknown_key = 1\n",
            section_header(name, section.array)
        );
        let (code, stderr) = exit_of(&config, &["--listen", &listen]);
        assert_eq!(
            code,
            Some(2),
            "[{name}] took an unknown key; stderr: {stderr}"
        );
        assert!(
            stderr.contains("docs_test_unknown_key"),
            "[{name}]: the refusal does not name the key: {stderr}"
        );
    }
    let (code, stderr) = exit_of("[docs_test_unknown_section]\n", &["--listen", &listen]);
    assert_eq!(
        code,
        Some(2),
        "an unknown section was taken; stderr: {stderr}"
    );
    assert!(stderr.contains("docs_test_unknown_section"), "{stderr}");
    drop(held);
}
