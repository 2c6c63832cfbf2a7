//! Field ownership (`metadata.managedFields`) and server-side apply, on JSON values: upstream's
//! structured-merge-diff and field manager for the built-in kinds.
//!
//! A [`FieldSet`] is a set of field paths kept as a tree, serialized as `fieldsV1`
//! (`f:<field>`, `k:{<keys>}` for elements of associative lists, `v:<value>` for elements of
//! sets, `.` when a node with children is itself a member). Every write records who set what:
//! [`record_update`] gives the fields a create, update or non-apply patch changed to its
//! manager (an `Update` entry) and takes them from everyone else; [`apply`] merges an applied
//! configuration into the live object, owns exactly the configuration's fields (an `Apply`
//! entry), refuses to change a field another manager owns unless forced ([`Conflict`]) and
//! removes the fields the applier set last time, no longer sets, and nobody else owns.
//!
//! List types, merge keys and atomic structs come from [`crate::strategic`]'s table. Where
//! upstream would consult the OpenAPI schema to tell a struct from a map, every object is a
//! struct (its fields are "named fields") except the atomic ones; the few maps whose entries
//! are not scalars do not occur in the built-in kinds' ownership.
//!
//! Everything here is pure: the handlers pass the live object, the request and the time.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use crate::strategic::{self, ListType};

/// Upstream's limit on update managers; older ones are merged into `ancient-changes`.
const MAX_UPDATE_MANAGERS: usize = 10;
/// The manager that inherits the fields of an object applied to for the first time after its
/// managed fields were reset.
const BEFORE_FIRST_APPLY: &str = "before-first-apply";
/// The bucket old update entries are merged into.
const ANCIENT_CHANGES: &str = "ancient-changes";
/// The client-side apply annotation `kubectl apply` keeps.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// The manager whose applies upgrade client-side apply (upstream's rule, by name).
const KUBECTL: &str = "kubectl";

// ---------------------------------------------------------------------------------------------
// Field sets

/// A set of field paths (upstream's `fieldpath.Set`). Each node is one path element; a node
/// is a member when the path that reaches it is in the set. Empty children are never kept,
/// so two equal sets are equal values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet {
    member: bool,
    children: BTreeMap<String, FieldSet>,
}

impl FieldSet {
    /// The set holding these paths (each a list of path elements such as `f:spec`).
    pub fn from_paths<'a>(paths: impl IntoIterator<Item = &'a [&'a str]>) -> FieldSet {
        let mut set = FieldSet::default();
        for path in paths {
            set.insert(path);
        }
        set
    }

    /// Whether the set holds no path.
    pub fn is_empty(&self) -> bool {
        !self.member && self.children.is_empty()
    }

    /// Adds a path (the empty path, the object itself, is never a member).
    pub fn insert(&mut self, path: &[&str]) {
        let Some((first, rest)) = path.split_first() else {
            return;
        };
        let child = self.children.entry((*first).to_owned()).or_default();
        if rest.is_empty() {
            child.member = true;
        } else {
            child.insert(rest);
        }
    }

    /// Whether the set holds `path`.
    #[cfg(test)]
    pub fn has(&self, path: &[&str]) -> bool {
        match path.split_first() {
            None => self.member,
            Some((first, rest)) => self.children.get(*first).is_some_and(|c| c.has(rest)),
        }
    }

    fn child(&self, element: &str) -> Option<&FieldSet> {
        self.children.get(element)
    }

    /// Paths in either set.
    pub fn union(&self, other: &FieldSet) -> FieldSet {
        let mut out = self.clone();
        out.member |= other.member;
        for (k, v) in &other.children {
            let merged = match out.children.get(k) {
                Some(mine) => mine.union(v),
                None => v.clone(),
            };
            out.children.insert(k.clone(), merged);
        }
        out
    }

    /// Paths in this set and not in `other`.
    pub fn difference(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet {
            member: self.member && !other.member,
            children: BTreeMap::new(),
        };
        for (k, v) in &self.children {
            let rest = match other.children.get(k) {
                Some(theirs) => v.difference(theirs),
                None => v.clone(),
            };
            if !rest.is_empty() {
                out.children.insert(k.clone(), rest);
            }
        }
        out
    }

    /// Paths in both sets.
    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet {
            member: self.member && other.member,
            children: BTreeMap::new(),
        };
        for (k, v) in &self.children {
            if let Some(theirs) = other.children.get(k) {
                let both = v.intersection(theirs);
                if !both.is_empty() {
                    out.children.insert(k.clone(), both);
                }
            }
        }
        out
    }

    /// The set with every named field on its paths a member (upstream's
    /// `EnsureNamedFieldsAreMembers`): owning `.spec.x.a` then also claims `.spec` and
    /// `.spec.x`, but not a list element on the way.
    fn with_named_members(&self) -> FieldSet {
        let children = self
            .children
            .iter()
            .map(|(k, v)| {
                let mut c = v.with_named_members();
                c.member |= k.starts_with("f:");
                (k.clone(), c)
            })
            .collect();
        FieldSet {
            member: self.member,
            children,
        }
    }

    /// Every member path, members of a node before its children's, each in order (upstream's
    /// `Iterate`), rendered as upstream prints paths (`.spec.containers[name="c"].image`).
    pub fn paths(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.collect_paths(&mut Vec::new(), &mut out);
        out
    }

    fn collect_paths<'a>(&'a self, prefix: &mut Vec<&'a str>, out: &mut Vec<String>) {
        for (k, v) in &self.children {
            if v.member {
                prefix.push(k);
                out.push(render_path(prefix));
                prefix.pop();
            }
        }
        for (k, v) in &self.children {
            prefix.push(k);
            v.collect_paths(prefix, out);
            prefix.pop();
        }
    }

    /// The set as a `fieldsV1` object.
    pub fn to_fields_v1(&self) -> Value {
        let mut m = Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".into(), json!({}));
        }
        for (k, v) in &self.children {
            m.insert(k.clone(), v.to_fields_v1());
        }
        Value::Object(m)
    }

    /// Parses a `fieldsV1` object.
    pub fn from_fields_v1(v: &Value) -> Result<FieldSet, String> {
        let mut set = FieldSet::from_node(v)?;
        set.member = false;
        Ok(set)
    }

    fn from_node(v: &Value) -> Result<FieldSet, String> {
        let Value::Object(m) = v else {
            return Err(format!("a fieldsV1 node must be an object, not {v}"));
        };
        let mut set = FieldSet::default();
        for (k, child) in m {
            if k == "." {
                set.member = true;
                continue;
            }
            let element = canonical_element(k)?;
            let child = FieldSet::from_node(child)?;
            if !child.is_empty() {
                set.children.insert(element, child);
            }
        }
        if set.children.is_empty() {
            set.member = true;
        }
        Ok(set)
    }
}

/// A path element of a `fieldsV1` key in its canonical form (keys and values re-encoded as
/// compact JSON with sorted keys), so that equal elements compare equal.
fn canonical_element(k: &str) -> Result<String, String> {
    let bad = || format!("invalid path element {k:?} in fieldsV1");
    let (kind, rest) = k.split_at_checked(2).ok_or_else(bad)?;
    match kind {
        "f:" => Ok(k.to_owned()),
        "k:" | "v:" => {
            let value: Value = serde_json::from_str(rest).map_err(|_| bad())?;
            if kind == "k:" && !value.is_object() {
                return Err(bad());
            }
            Ok(format!("{kind}{value}"))
        }
        "i:" => rest
            .parse::<usize>()
            .map(|_| k.to_owned())
            .map_err(|_| bad()),
        _ => Err(bad()),
    }
}

/// A path as upstream prints it: `.metadata.labels.app`, `[name="c"]`, `[="a"]`, `[0]`.
fn render_path(path: &[&str]) -> String {
    let mut out = String::new();
    for element in path {
        let (kind, rest) = element.split_at(2);
        match kind {
            "f:" => {
                out.push('.');
                out.push_str(rest);
            }
            "k:" => {
                let keys: Map<String, Value> = serde_json::from_str(rest).unwrap_or_default();
                let parts: Vec<String> = keys
                    .iter()
                    .map(|(name, v)| format!("{name}={}", render_value(v)))
                    .collect();
                out.push_str(&format!("[{}]", parts.join(",")));
            }
            "v:" => {
                let v: Value = serde_json::from_str(rest).unwrap_or(Value::Null);
                out.push_str(&format!("[={}]", render_value(&v)));
            }
            _ => out.push_str(&format!("[{rest}]")),
        }
    }
    out
}

/// A value as upstream's `value.ToString` prints it (strings quoted).
fn render_value(v: &Value) -> String {
    match v {
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(render_value).collect();
            format!("[{}]", parts.join(","))
        }
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k}={}", render_value(v)))
            .collect(),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// The shape of values, from the schema table

/// What a value at a path is to server-side apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Owned whole: scalars, atomic lists and atomic objects.
    Leaf,
    /// A struct or map: each field owned on its own.
    Object,
    /// A set or an associative list: each element owned on its own.
    List(ListType),
}

fn shape(v: &Value, path: &[&str]) -> Shape {
    match v {
        Value::Object(_) if strategic::is_atomic_object(path) => Shape::Leaf,
        Value::Object(_) => Shape::Object,
        Value::Array(_) => match strategic::list_schema(path).apply {
            ListType::Atomic => Shape::Leaf,
            t => Shape::List(t),
        },
        _ => Shape::Leaf,
    }
}

/// The path element of one element of a set or associative list.
fn element_of(item: &Value, list: ListType) -> Result<String, String> {
    match list {
        ListType::Map(keys) => {
            let mut key = Map::new();
            for k in keys {
                let value = match item.get(k.name) {
                    Some(v) if !v.is_null() => v.clone(),
                    _ => match k.default {
                        Some(d) => json!(d),
                        None => {
                            return Err(format!(
                                "associative list with keys has an element that omits key field \
                                 {:?} (and doesn't have default value)",
                                k.name
                            ));
                        }
                    },
                };
                key.insert(k.name.to_owned(), value);
            }
            Ok(format!("k:{}", Value::Object(key)))
        }
        ListType::Set => Ok(format!("v:{item}")),
        ListType::Atomic => Err("an atomic list has no elements of its own".to_owned()),
    }
}

/// The elements of a set or associative list with their path elements. Duplicates fail
/// unless allowed; an element without its key always fails.
fn elements<'a>(
    items: &'a [Value],
    list: ListType,
    path: &[&str],
    allow_duplicates: bool,
) -> Result<Vec<(String, &'a Value)>, String> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let element = element_of(item, list)
            .map_err(|e| format!("{}: element {i}: {e}", render_names(path)))?;
        if !seen.insert(element.clone()) && !allow_duplicates {
            return Err(format!(
                "{}: duplicate entries for key {}",
                render_names(path),
                render_path(&[element.as_str()])
            ));
        }
        out.push((element, item));
    }
    Ok(out)
}

fn render_names(path: &[&str]) -> String {
    path.iter().map(|p| format!(".{p}")).collect()
}

// ---------------------------------------------------------------------------------------------
// Sets of objects

/// The fields a value sets: every leaf, element of a set or associative list and atomic value
/// (upstream's `ToFieldSet`). Empty objects and lists set nothing.
pub fn fields_of(v: &Value, allow_duplicates: bool) -> Result<FieldSet, String> {
    let mut set = FieldSet::default();
    collect_fields(v, &mut Vec::new(), &mut set, allow_duplicates)?;
    Ok(set)
}

fn collect_fields<'a>(
    v: &'a Value,
    path: &mut Vec<&'a str>,
    node: &mut FieldSet,
    dups: bool,
) -> Result<(), String> {
    match (v, shape(v, path)) {
        (Value::Object(m), Shape::Object) => {
            for (k, child) in m {
                path.push(k);
                let mut sub = FieldSet {
                    member: shape(child, path) == Shape::Leaf,
                    children: BTreeMap::new(),
                };
                collect_fields(child, path, &mut sub, dups)?;
                path.pop();
                if !sub.is_empty() {
                    node.children.insert(format!("f:{k}"), sub);
                }
            }
        }
        (Value::Array(items), Shape::List(list)) => {
            for (element, item) in elements(items, list, path, dups)? {
                let sub = node.children.entry(element).or_default();
                sub.member = true;
                if matches!(list, ListType::Map(_)) && item.is_object() {
                    collect_fields(item, path, sub, dups)?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Every node of a value, each a member: what exists in it.
fn presence(v: &Value, path: &mut Vec<String>) -> FieldSet {
    let mut node = FieldSet {
        member: !path.is_empty(),
        children: BTreeMap::new(),
    };
    let names: Vec<&str> = path.iter().map(String::as_str).collect();
    match (v, shape(v, &names)) {
        (Value::Object(m), Shape::Object) => {
            for (k, child) in m {
                path.push(k.clone());
                node.children
                    .insert(format!("f:{k}"), presence(child, path));
                path.pop();
            }
        }
        (Value::Array(items), Shape::List(list)) => {
            for item in items {
                if let Ok(element) = element_of(item, list) {
                    let sub = if matches!(list, ListType::Map(_)) {
                        presence(item, path)
                    } else {
                        FieldSet {
                            member: true,
                            children: BTreeMap::new(),
                        }
                    };
                    node.children.insert(element, sub);
                }
            }
        }
        _ => {}
    }
    node
}

/// What changed between two versions of an object (upstream's `Comparison`): leaves whose
/// value changed, and every node (leaf or not) that appeared or went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    pub added: FieldSet,
    pub modified: FieldSet,
    pub removed: FieldSet,
}

/// Compares `lhs` (before) with `rhs` (after).
pub fn compare(lhs: &Value, rhs: &Value) -> Comparison {
    let mut out = Comparison::default();
    compare_at(
        Some(lhs),
        Some(rhs),
        &mut Vec::new(),
        &mut Vec::new(),
        &mut out,
    );
    out
}

fn is_empty_container(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::Object(m)) => m.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        _ => false,
    }
}

fn compare_at<'a>(
    lhs: Option<&'a Value>,
    rhs: Option<&'a Value>,
    names: &mut Vec<&'a str>,
    path: &mut Vec<String>,
    out: &mut Comparison,
) {
    // A null stands for an empty value of the other side's shape.
    let probe = match (lhs, rhs) {
        (_, Some(r)) if !r.is_null() => r,
        (Some(l), _) if !l.is_null() => l,
        (Some(v), _) | (None, Some(v)) => v,
        (None, None) => return,
    };
    let kind = shape(probe, names);
    let same_kind = match (lhs, rhs) {
        (Some(l), Some(r)) if !l.is_null() && !r.is_null() => shape(l, names) == shape(r, names),
        _ => true,
    };
    let leaf = || {
        let p: Vec<&str> = path.iter().map(String::as_str).collect();
        (p, lhs, rhs)
    };
    let both_empty = is_empty_container(lhs) && is_empty_container(rhs);
    if kind == Shape::Leaf || !same_kind || both_empty {
        let (p, l, r) = leaf();
        match (l, r) {
            (None, Some(_)) => out.added.insert(&p),
            (Some(_), None) => out.removed.insert(&p),
            (Some(l), Some(r)) if l != r => out.modified.insert(&p),
            _ => {}
        }
        return;
    }
    match kind {
        Shape::Object => {
            let lm = lhs.and_then(Value::as_object);
            let rm = rhs.and_then(Value::as_object);
            let keys: BTreeSet<&'a String> =
                lm.into_iter().chain(rm).flat_map(|m| m.keys()).collect();
            for k in keys {
                names.push(k);
                path.push(format!("f:{k}"));
                compare_at(
                    lm.and_then(|m| m.get(k)),
                    rm.and_then(|m| m.get(k)),
                    names,
                    path,
                    out,
                );
                path.pop();
                names.pop();
            }
        }
        Shape::List(list) => {
            let la = lhs.and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
            let ra = rhs.and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
            let (Ok(le), Ok(re)) = (
                elements(la, list, names, false),
                elements(ra, list, names, false),
            ) else {
                // Duplicates or elements without keys: the list compares as a whole.
                let (p, l, r) = leaf();
                if l != r {
                    out.modified.insert(&p);
                }
                return;
            };
            let lmap: BTreeMap<&str, &Value> = le.iter().map(|(e, v)| (e.as_str(), *v)).collect();
            let rmap: BTreeMap<&str, &Value> = re.iter().map(|(e, v)| (e.as_str(), *v)).collect();
            let keys: BTreeSet<&str> = lmap.keys().chain(rmap.keys()).copied().collect();
            for element in keys {
                path.push(element.to_owned());
                if matches!(list, ListType::Map(_)) {
                    compare_at(
                        lmap.get(element).copied(),
                        rmap.get(element).copied(),
                        names,
                        path,
                        out,
                    );
                } else {
                    let p: Vec<&str> = path.iter().map(String::as_str).collect();
                    match (lmap.contains_key(element), rmap.contains_key(element)) {
                        (false, true) => out.added.insert(&p),
                        (true, false) => out.removed.insert(&p),
                        _ => {}
                    }
                }
                path.pop();
            }
        }
        Shape::Leaf => unreachable!("leaves are handled above"),
    }
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    match (lhs, rhs) {
        (None, Some(_)) => out.added.insert(&p),
        (Some(_), None) => out.removed.insert(&p),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Merge and removal

/// Merges an applied configuration into the live object (upstream's typed `Merge`): objects
/// field by field, sets and associative lists element by element (the configuration's order
/// for the elements it names, the live order for the others), everything else replaced.
pub fn merge(live: &Value, config: &Value) -> Result<Value, String> {
    merge_at(Some(live), config, &mut Vec::new())
}

fn merge_at<'a>(
    live: Option<&'a Value>,
    config: &'a Value,
    names: &mut Vec<&'a str>,
) -> Result<Value, String> {
    let kind = shape(config, names);
    let live = live.filter(|l| shape(l, names) == kind);
    match (config, kind) {
        (Value::Object(cm), Shape::Object) => {
            let mut out = live.and_then(Value::as_object).cloned().unwrap_or_default();
            for (k, cv) in cm {
                names.push(k);
                let merged = merge_at(live.and_then(|l| l.get(k)), cv, names)?;
                names.pop();
                out.insert(k.clone(), merged);
            }
            Ok(Value::Object(out))
        }
        (Value::Array(ca), Shape::List(list)) => {
            let la = live
                .and_then(Value::as_array)
                .map_or(&[][..], Vec::as_slice);
            let theirs = elements(la, list, names, true)?;
            let ours = elements(ca, list, names, false)?;
            merge_elements(&theirs, &ours, list, names).map(Value::Array)
        }
        _ => Ok(config.clone()),
    }
}

/// Merges the elements of a set or associative list. Each live element the configuration
/// also names is a slot: slots are filled in the configuration's order, each preceded by the
/// configuration's new elements that come before it; live-only elements keep their places
/// and the remaining new elements go last.
fn merge_elements<'a>(
    live: &[(String, &'a Value)],
    config: &[(String, &'a Value)],
    list: ListType,
    names: &mut Vec<&'a str>,
) -> Result<Vec<Value>, String> {
    let in_config: BTreeSet<&str> = config.iter().map(|(e, _)| e.as_str()).collect();
    let mut live_first: BTreeMap<&str, &Value> = BTreeMap::new();
    for (e, v) in live {
        live_first.entry(e.as_str()).or_insert(*v);
    }
    let merge_one = |element: &str, item: &'a Value, names: &mut Vec<&'a str>| match list {
        ListType::Map(_) => merge_at(live_first.get(element).copied(), item, names),
        _ => Ok(item.clone()),
    };
    let mut out = Vec::with_capacity(live.len().max(config.len()));
    let mut next = 0;
    let mut slots_seen = BTreeSet::new();
    for (element, item) in live {
        if !in_config.contains(element.as_str()) {
            out.push((*item).clone());
            continue;
        }
        if !slots_seen.insert(element.as_str()) {
            // A duplicate of an element the configuration names: replaced by it, once.
            continue;
        }
        while next < config.len() {
            let (ce, ci) = &config[next];
            next += 1;
            out.push(merge_one(ce, ci, names)?);
            if live_first.contains_key(ce.as_str()) {
                break;
            }
        }
    }
    for (ce, ci) in &config[next..] {
        out.push(merge_one(ce, ci, names)?);
    }
    Ok(out)
}

/// The value without the paths of `set` (upstream's `RemoveItems`): a member path goes with
/// everything under it; an object or list emptied by the removal goes too.
pub fn remove_items(v: &Value, set: &FieldSet) -> Value {
    remove_at(v, set, &mut Vec::new())
}

fn remove_at<'a>(v: &'a Value, set: &FieldSet, names: &mut Vec<&'a str>) -> Value {
    match (v, shape(v, names)) {
        (Value::Object(m), Shape::Object) => {
            let mut out = Map::new();
            for (k, child) in m {
                match set.child(&format!("f:{k}")) {
                    Some(s) if s.member => {}
                    Some(s) => {
                        names.push(k);
                        let kept = remove_at(child, s, names);
                        names.pop();
                        if !emptied(child, &kept) {
                            out.insert(k.clone(), kept);
                        }
                    }
                    None => {
                        out.insert(k.clone(), child.clone());
                    }
                }
            }
            Value::Object(out)
        }
        (Value::Array(items), Shape::List(list)) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                let Ok(element) = element_of(item, list) else {
                    out.push(item.clone());
                    continue;
                };
                match set.child(&element) {
                    Some(s) if s.member => {}
                    Some(s) => out.push(remove_at(item, s, names)),
                    None => out.push(item.clone()),
                }
            }
            Value::Array(out)
        }
        _ => v.clone(),
    }
}

fn emptied(before: &Value, after: &Value) -> bool {
    !is_empty_container(Some(before)) && is_empty_container(Some(after))
}

/// Removes what the applier owned in its last apply (`last`), no longer sets, and no manager
/// (`owned`, the applier's new set included) owns; fields that appear under a removed one but
/// were not the applier's are kept (upstream's `prune`, `addBackOwnedItems` and
/// `addBackDanglingItems`).
fn prune(merged: Value, owned: &FieldSet, last: &FieldSet) -> Value {
    if last.is_empty() {
        return merged;
    }
    let last = last.with_named_members();
    let owned = owned.with_named_members();
    let fields = |v: &Value| fields_of(v, true).unwrap_or_default().with_named_members();
    let merged_set = fields(&merged);
    let pruned = remove_items(&merged, &last);
    let pruned = remove_items(
        &merged,
        &merged_set.difference(&fields(&pruned).union(&owned)),
    );
    let gone = merged_set.difference(&fields(&pruned)).intersection(&last);
    remove_items(&merged, &gone)
}

// ---------------------------------------------------------------------------------------------
// Managed fields entries

/// `Apply` or `Update`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Operation {
    Apply,
    Update,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Apply => "Apply",
            Operation::Update => "Update",
        }
    }
}

/// One `metadata.managedFields` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub manager: String,
    pub operation: Operation,
    pub api_version: String,
    pub subresource: String,
    pub time: Option<String>,
    pub fields: FieldSet,
}

impl Entry {
    /// Whether two entries are the same owner: manager, operation and subresource, and for
    /// updates the apiVersion (an applier keeps one entry across versions), as upstream's
    /// manager identifier.
    fn same_owner(&self, other: &Entry) -> bool {
        self.manager == other.manager
            && self.operation == other.operation
            && self.subresource == other.subresource
            && (self.operation == Operation::Apply || self.api_version == other.api_version)
    }

    /// The owner as conflict messages name it.
    fn describe(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            s.push_str(&format!(" with subresource {:?}", self.subresource));
        }
        if self.operation == Operation::Update {
            s.push_str(&format!(" using {}", self.api_version));
        }
        s
    }

    fn to_json(&self) -> Value {
        let mut e = json!({
            "manager": self.manager,
            "operation": self.operation.as_str(),
            "apiVersion": self.api_version,
            "fieldsType": "FieldsV1",
            "fieldsV1": self.fields.to_fields_v1(),
        });
        if let Some(t) = &self.time {
            e["time"] = json!(t);
        }
        if !self.subresource.is_empty() {
            e["subresource"] = json!(self.subresource);
        }
        e
    }

    fn from_json(i: usize, v: &Value) -> Result<Entry, String> {
        let s = |f: &str| v.get(f).and_then(Value::as_str).unwrap_or("").to_owned();
        let operation = match v.get("operation").and_then(Value::as_str) {
            Some("Apply") => Operation::Apply,
            Some("Update") => Operation::Update,
            _ => return Err("operation must be `Apply` or `Update`".to_owned()),
        };
        if s("apiVersion").is_empty() {
            return Err("apiVersion must not be empty".to_owned());
        }
        match s("fieldsType").as_str() {
            "FieldsV1" => {}
            "" => return Err(format!("missing fieldsType in managed fields entry {i}")),
            other => {
                return Err(format!(
                    "invalid fieldsType {other:?} in managed fields entry {i}"
                ));
            }
        }
        let fields = match v.get("fieldsV1") {
            None | Some(Value::Null) => FieldSet::default(),
            Some(f) => FieldSet::from_fields_v1(f)?,
        };
        Ok(Entry {
            manager: s("manager"),
            operation,
            api_version: s("apiVersion"),
            subresource: s("subresource"),
            time: v.get("time").and_then(Value::as_str).map(str::to_owned),
            fields,
        })
    }
}

/// Decodes `metadata.managedFields` (absent: none).
pub fn decode(managed_fields: Option<&Value>) -> Result<Vec<Entry>, String> {
    let mut out: Vec<Entry> = Vec::new();
    let Some(items) = managed_fields.filter(|v| !v.is_null()) else {
        return Ok(out);
    };
    let items = items
        .as_array()
        .ok_or_else(|| "managedFields must be a list".to_owned())?;
    for (i, item) in items.iter().enumerate() {
        let entry = Entry::from_json(i, item)?;
        // Two entries of one owner: the later wins, as upstream's decoding into a map.
        match out.iter().position(|e| e.same_owner(&entry)) {
            Some(p) => out[p] = entry,
            None => out.push(entry),
        }
    }
    Ok(out)
}

/// Encodes entries, sorted as upstream (operation, time, manager, apiVersion, subresource);
/// `None` when there are none.
pub fn encode(mut entries: Vec<Entry>) -> Option<Value> {
    entries.retain(|e| !e.fields.is_empty());
    if entries.is_empty() {
        return None;
    }
    entries.sort_by(|a, b| {
        (
            a.operation,
            &a.time,
            &a.manager,
            &a.api_version,
            &a.subresource,
        )
            .cmp(&(
                b.operation,
                &b.time,
                &b.manager,
                &b.api_version,
                &b.subresource,
            ))
    });
    Some(Value::Array(entries.iter().map(Entry::to_json).collect()))
}

/// `[]` or `[{}]`: a request asking to clear the managed fields.
fn is_reset(managed_fields: Option<&Value>) -> bool {
    match managed_fields.and_then(Value::as_array) {
        Some(items) => match items.as_slice() {
            [] => true,
            [only] => only
                .as_object()
                .is_some_and(|m| m.values().all(Value::is_null)),
            _ => false,
        },
        None => false,
    }
}

/// Keeps at most [`MAX_UPDATE_MANAGERS`] update entries: the oldest are merged, per
/// apiVersion, into an `ancient-changes` entry (upstream's `capManagersManager`).
fn cap_update_managers(entries: &mut Vec<Entry>) {
    let mut updaters: Vec<usize> = (0..entries.len())
        .filter(|i| entries[*i].operation == Operation::Update)
        .collect();
    if updaters.len() <= MAX_UPDATE_MANAGERS {
        return;
    }
    updaters.sort_by(|a, b| {
        let (a, b) = (&entries[*a], &entries[*b]);
        (&a.time, &a.manager).cmp(&(&b.time, &b.manager))
    });
    let is_bucket = |e: &Entry, version: &str| {
        e.manager == ANCIENT_CHANGES
            && e.operation == Operation::Update
            && e.subresource.is_empty()
            && e.api_version == version
    };
    let mut first_of_version: BTreeMap<String, usize> = BTreeMap::new();
    let mut removed = BTreeSet::new();
    let mut count = updaters.len();
    for i in updaters {
        if count <= MAX_UPDATE_MANAGERS {
            break;
        }
        let version = entries[i].api_version.clone();
        let Some(&first) = first_of_version.get(&version) else {
            first_of_version.insert(version, i);
            continue;
        };
        let bucket = match (0..entries.len())
            .find(|b| !removed.contains(b) && is_bucket(&entries[*b], &version))
        {
            Some(b) => b,
            None => {
                entries[first].manager = ANCIENT_CHANGES.to_owned();
                entries[first].subresource = String::new();
                first
            }
        };
        if bucket == i {
            continue;
        }
        entries[bucket].fields = entries[bucket].fields.union(&entries[i].fields);
        entries[bucket].time = entries[i].time.clone();
        removed.insert(i);
        count -= 1;
    }
    let mut index = 0;
    entries.retain(|_| {
        index += 1;
        !removed.contains(&(index - 1))
    });
}

// ---------------------------------------------------------------------------------------------
// Writes

/// Who writes: the manager, the apiVersion of the request and the subresource (empty for
/// the object itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Writer {
    pub manager: String,
    pub api_version: String,
    pub subresource: String,
}

impl Writer {
    fn entry(&self, operation: Operation, fields: FieldSet, time: Option<String>) -> Entry {
        Entry {
            manager: self.manager.clone(),
            operation,
            api_version: self.api_version.clone(),
            subresource: self.subresource.clone(),
            time,
            fields,
        }
    }
}

/// Which fields a write may own (upstream's reset fields): a kind with a status subresource
/// keeps `.status` out of writes to the object and everything else out of status writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Everything,
    AllButStatus,
    StatusOnly,
}

impl Scope {
    fn filter(self, set: &FieldSet) -> FieldSet {
        let status = FieldSet::from_paths([&["f:status"][..]]);
        match self {
            Scope::Everything => set.clone(),
            Scope::AllButStatus => set.difference(&status),
            Scope::StatusOnly => {
                let mut only = FieldSet::default();
                if let Some(s) = set.child("f:status") {
                    only.children.insert("f:status".into(), s.clone());
                }
                only
            }
        }
    }

    fn filter_comparison(self, c: Comparison) -> Comparison {
        Comparison {
            added: self.filter(&c.added),
            modified: self.filter(&c.modified),
            removed: self.filter(&c.removed),
        }
    }
}

/// Fields nobody owns: type and identity, and what the server maintains.
const SYSTEM_METADATA: [&str; 9] = [
    "name",
    "namespace",
    "creationTimestamp",
    "selfLink",
    "uid",
    "clusterName",
    "generation",
    "managedFields",
    "resourceVersion",
];

/// The object without the fields nobody owns.
fn without_system_fields(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("apiVersion");
        m.remove("kind");
        if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
            for f in SYSTEM_METADATA {
                meta.remove(f);
            }
        }
    }
    v
}

/// A set without the paths nobody owns.
fn without_system_paths(set: &FieldSet) -> FieldSet {
    let mut paths: Vec<Vec<String>> = vec![vec!["f:apiVersion".into()], vec!["f:kind".into()]];
    paths.push(vec!["f:metadata".into()]);
    for f in SYSTEM_METADATA {
        paths.push(vec!["f:metadata".into(), format!("f:{f}")]);
    }
    let refs: Vec<Vec<&str>> = paths
        .iter()
        .map(|p| p.iter().map(String::as_str).collect())
        .collect();
    set.difference(&FieldSet::from_paths(refs.iter().map(Vec::as_slice)))
}

fn managed_fields_of(obj: &Value) -> Option<&Value> {
    obj.get("metadata")?.get("managedFields")
}

fn set_managed_fields(obj: &mut Value, entries: Vec<Entry>) {
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    match encode(entries) {
        Some(v) => meta.insert("managedFields".into(), v),
        None => meta.remove("managedFields"),
    };
}

/// Upstream compares with Go values, where a struct (and a list without `omitempty`, such
/// as `containers`) exists even when empty: a write that fills one owns what it put there,
/// not the node itself. Maps and other lists start as nil, so creating them owns them.
fn drop_struct_members(set: &mut FieldSet, v: &Value) {
    for (k, child) in set.children.iter_mut() {
        let (kind, name) = k.split_at(2);
        let value = match (kind, v) {
            ("f:", Value::Object(m)) => m.get(name),
            _ => None,
        };
        if let Some(value) = value {
            let always_there = match value {
                Value::Object(_) => !strategic::is_map_field(name),
                Value::Array(_) => name == "containers",
                _ => false,
            };
            if always_there && !child.children.is_empty() {
                child.member = false;
            }
            drop_struct_members(child, value);
        } else if kind == "k:"
            && let Value::Array(items) = v
        {
            // The element's fields: find the element by its key values.
            let keys: Map<String, Value> = serde_json::from_str(name).unwrap_or_default();
            if let Some(item) = items.iter().find(|i| {
                keys.iter()
                    .all(|(kn, kv)| i.get(kn).is_none_or(|x| x == kv))
            }) {
                drop_struct_members(child, item);
            }
        }
    }
    set.children.retain(|_, c| !c.is_empty());
}

/// Records a create (`live` is `None`), update or non-apply patch by `writer` in
/// `new.metadata.managedFields` (upstream's `FieldManager.Update`): the fields it changed
/// become its own (`Update` entry, time refreshed) and leave every other entry, removed
/// fields leave every entry. A request's own `managedFields` replace the live ones if they
/// decode (`[]` or `[{}]` clears them); subresource writes always start from the live ones.
/// An existing object without managed fields stays untracked until it is applied to.
pub fn record_update(
    live: Option<&Value>,
    new: &mut Value,
    writer: &Writer,
    scope: Scope,
    now: &str,
) {
    let live_entries = || decode(live.and_then(managed_fields_of)).unwrap_or_default();
    let requested = managed_fields_of(new);
    let entries = if !writer.subresource.is_empty() {
        live_entries()
    } else if is_reset(requested) {
        Vec::new()
    } else {
        match decode(requested) {
            Ok(e) if !e.is_empty() => e,
            _ => live_entries(),
        }
    };
    if let Some(meta) = new.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    if entries.is_empty() && live.is_some() {
        return;
    }
    let entries = update_entries(entries, live, new, writer, scope, now);
    set_managed_fields(new, entries);
    if let Some(live) = live {
        keep_live_timestamps(live, new);
    }
}

/// Upstream's `IgnoreManagedFieldsTimestampsTransformer`: when a write changes nothing but
/// managed-field timestamps (a client sending back the entries it read earlier, say), the
/// live entries stay as they are, so that the write is a no-op (no new resourceVersion, no
/// watch event) whatever second it lands in.
fn keep_live_timestamps(live: &Value, new: &mut Value) {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("managedFields");
            meta.remove("resourceVersion");
        }
        v
    };
    let untimed = |v: &Value| {
        let mut entries = managed_fields_of(v).cloned().unwrap_or(Value::Null);
        for e in entries.as_array_mut().into_iter().flatten() {
            if let Some(e) = e.as_object_mut() {
                e.remove("time");
            }
        }
        entries
    };
    if managed_fields_of(live) != managed_fields_of(new)
        && untimed(live) == untimed(new)
        && strip(live) == strip(new)
        && let (Some(entries), Some(meta)) = (
            managed_fields_of(live).cloned(),
            new.get_mut("metadata").and_then(Value::as_object_mut),
        )
    {
        meta.insert("managedFields".into(), entries);
    }
}

fn update_entries(
    mut entries: Vec<Entry>,
    live: Option<&Value>,
    new: &Value,
    writer: &Writer,
    scope: Scope,
    now: &str,
) -> Vec<Entry> {
    let empty = json!({});
    let before = without_system_fields(live.unwrap_or(&empty));
    let after = without_system_fields(new);
    let c = scope.filter_comparison(compare(&before, &after));
    let mut changed = without_system_paths(&c.modified.union(&c.added));
    drop_struct_members(&mut changed, &after);
    let taken = c.modified.union(&c.added).union(&c.removed);
    for e in &mut entries {
        e.fields = e.fields.difference(&taken);
    }
    entries.retain(|e| !e.fields.is_empty());
    if !changed.is_empty() {
        let mine = writer.entry(Operation::Update, FieldSet::default(), None);
        match entries.iter_mut().find(|e| e.same_owner(&mine)) {
            Some(e) => {
                e.fields = e.fields.union(&changed);
                e.time = Some(now.to_owned());
            }
            None => entries.push(writer.entry(Operation::Update, changed, Some(now.to_owned()))),
        }
    }
    cap_update_managers(&mut entries);
    entries
}

/// A field an apply would change that another manager owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The owner, as upstream names it (`"kubectl-scale" with subresource "scale" using
    /// apps/v1`).
    pub manager: String,
    /// The field (`.spec.replicas`).
    pub field: String,
}

/// Why an apply failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyError {
    /// The configuration cannot be applied (a keyed element without its key, duplicates).
    Invalid(String),
    /// Fields other managers own would change; nothing was applied.
    Conflicts(Vec<Conflict>),
}

/// Upstream's message for a failed apply.
pub fn conflict_message(conflicts: &[Conflict]) -> String {
    if let [only] = conflicts {
        return format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            only.manager, only.field
        );
    }
    let mut by_manager: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for c in conflicts {
        by_manager.entry(&c.manager).or_default().push(&c.field);
    }
    let mut lines = Vec::new();
    for (manager, fields) in by_manager {
        lines.push(format!("conflicts with {manager}:"));
        lines.extend(fields.iter().map(|f| format!("- {f}")));
    }
    format!(
        "Apply failed with {} conflicts: {}",
        conflicts.len(),
        lines.join("\n")
    )
}

/// Applies `config` to `live` (`None`: the object does not exist yet) for `writer`
/// (upstream's `FieldManager.Apply`). Returns the object to store, with its managed fields;
/// it equals `live` when the apply changes nothing.
pub fn apply(
    live: Option<&Value>,
    config: &Value,
    writer: &Writer,
    scope: Scope,
    force: bool,
    now: &str,
) -> Result<Value, ApplyError> {
    let mut current = live.cloned().unwrap_or_else(|| json!({}));
    if let Some(meta) = current.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    let mut entries = decode(live.and_then(managed_fields_of)).unwrap_or_default();
    if entries.is_empty() && live.is_some() {
        // Untracked so far: what exists belongs to whoever wrote it before.
        let before = Writer {
            manager: BEFORE_FIRST_APPLY.to_owned(),
            ..writer.clone()
        };
        entries = update_entries(Vec::new(), None, &current, &before, scope, now);
    }
    let set = scope.filter(&fields_of(config, false).map_err(ApplyError::Invalid)?);
    let mine = writer.entry(Operation::Apply, set.clone(), None);
    let last = entries.iter().find(|e| e.same_owner(&mine)).cloned();
    let merged = merge(&current, config).map_err(ApplyError::Invalid)?;
    let owned = entries
        .iter()
        .filter(|e| !e.same_owner(&mine))
        .fold(set.clone(), |acc, e| acc.union(&e.fields));
    let merged = prune(
        merged,
        &owned,
        &last.as_ref().map(|e| e.fields.clone()).unwrap_or_default(),
    );
    let c = scope.filter_comparison(compare(
        &without_system_fields(&current),
        &without_system_fields(&merged),
    ));
    let changed = c.modified.union(&c.added);
    let conflicts: Vec<(usize, FieldSet)> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| !e.same_owner(&mine))
        .map(|(i, e)| (i, e.fields.intersection(&changed)))
        .filter(|(_, s)| !s.is_empty())
        .collect();
    if !conflicts.is_empty() && !force {
        let allowed = if writer.manager == KUBECTL {
            allowed_by_last_applied(&current, writer)
        } else {
            FieldSet::default()
        };
        let refused: Vec<Conflict> = conflicts
            .iter()
            .flat_map(|(i, s)| {
                let who = entries[*i].describe();
                s.difference(&allowed)
                    .paths()
                    .into_iter()
                    .map(move |field| Conflict {
                        manager: who.clone(),
                        field,
                    })
            })
            .collect();
        if !refused.is_empty() {
            let mut refused = refused;
            refused.sort_by(|a, b| a.manager.cmp(&b.manager));
            return Err(ApplyError::Conflicts(refused));
        }
    }
    for (i, taken) in conflicts {
        entries[i].fields = entries[i].fields.difference(&taken);
    }
    for e in entries.iter_mut().filter(|e| !e.same_owner(&mine)) {
        e.fields = e.fields.difference(&c.removed);
    }
    let changed_object = merged != current;
    let time = match &last {
        Some(l) if !changed_object => l.time.clone().or_else(|| Some(now.to_owned())),
        _ => Some(now.to_owned()),
    };
    let applied = writer.entry(Operation::Apply, without_system_paths(&set), time);
    entries.retain(|e| !e.same_owner(&mine));
    entries.push(applied);
    let mut out = merged;
    if writer.manager == KUBECTL {
        update_last_applied(&mut out, config);
    }
    set_managed_fields(&mut out, entries);
    Ok(out)
}

/// The fields client-side apply last set that still hold the values it set: a `kubectl`
/// apply may take them over from `kubectl-client-side-apply` without a conflict.
fn allowed_by_last_applied(live: &Value, writer: &Writer) -> FieldSet {
    let Some(text) = live
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(LAST_APPLIED))
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    else {
        return FieldSet::default();
    };
    let Ok(last) = serde_json::from_str::<Value>(text) else {
        return FieldSet::default();
    };
    if last.get("apiVersion").and_then(Value::as_str) != Some(writer.api_version.as_str()) {
        return FieldSet::default();
    }
    let Ok(set) = fields_of(&last, true) else {
        return FieldSet::default();
    };
    let c = compare(&last, live);
    set.difference(&c.modified)
        .difference(&c.added)
        .difference(&c.removed)
}

/// Keeps an existing client-side apply annotation in step with what `kubectl` applied
/// server-side, so a later client-side apply computes its patch from it.
fn update_last_applied(obj: &mut Value, config: &Value) {
    let has = obj
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(LAST_APPLIED))
        .and_then(Value::as_str)
        .is_some_and(|t| !t.is_empty());
    if !has {
        return;
    }
    let mut applied = config.clone();
    if let Some(a) = applied
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        a.remove(LAST_APPLIED);
        if a.is_empty()
            && let Some(meta) = applied.get_mut("metadata").and_then(Value::as_object_mut)
        {
            meta.remove("annotations");
        }
    }
    obj["metadata"]["annotations"][LAST_APPLIED] = json!(format!("{applied}\n"));
}

/// Drops from the writer's `Apply` entry what the stored object does not hold (fields the
/// typed round trip dropped as unknown).
pub fn forget_absent(obj: &mut Value, writer: &Writer) {
    let Ok(mut entries) = decode(managed_fields_of(obj)) else {
        return;
    };
    let mine = writer.entry(Operation::Apply, FieldSet::default(), None);
    let present = presence(obj, &mut Vec::new());
    let Some(e) = entries.iter_mut().find(|e| e.same_owner(&mine)) else {
        return;
    };
    let kept = e.fields.intersection(&present);
    if kept == e.fields {
        return;
    }
    e.fields = kept;
    set_managed_fields(obj, entries);
}

#[cfg(test)]
mod tests;
