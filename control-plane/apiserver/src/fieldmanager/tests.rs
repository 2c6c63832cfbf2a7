//! Table-driven tests of the field-set algebra and of updates and applies.

use super::*;

fn set(v: Value) -> FieldSet {
    FieldSet::from_fields_v1(&v).unwrap()
}

const NOW: &str = "2030-01-01T00:00:00Z";
const LATER: &str = "2030-01-01T00:05:00Z";

fn writer(manager: &str) -> Writer {
    Writer {
        manager: manager.into(),
        api_version: "apps/v1".into(),
        subresource: String::new(),
    }
}

fn sub(manager: &str, subresource: &str) -> Writer {
    Writer {
        subresource: subresource.into(),
        ..writer(manager)
    }
}

fn entries(obj: &Value) -> Vec<Entry> {
    decode(obj.pointer("/metadata/managedFields")).unwrap()
}

/// The fieldsV1 of `manager`'s entry with `operation`.
fn owned(obj: &Value, manager: &str, operation: Operation) -> Option<Value> {
    entries(obj)
        .into_iter()
        .find(|e| e.manager == manager && e.operation == operation)
        .map(|e| e.fields.to_fields_v1())
}

fn deployment(replicas: i64, labels: Value, containers: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"spec": {"containers": containers}}
        }
    })
}

#[test]
fn set_algebra_table() {
    let a =
        json!({"f:metadata": {"f:labels": {"f:a": {}, "f:b": {}}}, "f:spec": {"f:replicas": {}}});
    let b = json!({"f:metadata": {"f:labels": {".": {}, "f:b": {}, "f:c": {}}}});
    // (operation, expected)
    let table: Vec<(&str, FieldSet, Value)> = vec![
        (
            "union",
            set(a.clone()).union(&set(b.clone())),
            json!({"f:metadata": {"f:labels": {".": {}, "f:a": {}, "f:b": {}, "f:c": {}}}, "f:spec": {"f:replicas": {}}}),
        ),
        (
            "difference",
            set(a.clone()).difference(&set(b.clone())),
            json!({"f:metadata": {"f:labels": {"f:a": {}}}, "f:spec": {"f:replicas": {}}}),
        ),
        (
            "difference keeps nothing empty",
            set(b.clone()).difference(&set(b.clone())),
            json!({}),
        ),
        (
            "intersection",
            set(a.clone()).intersection(&set(b.clone())),
            json!({"f:metadata": {"f:labels": {"f:b": {}}}}),
        ),
        (
            "a member node with children keeps both",
            set(b.clone()).difference(&set(json!({"f:metadata": {"f:labels": {"f:b": {}}}}))),
            json!({"f:metadata": {"f:labels": {".": {}, "f:c": {}}}}),
        ),
        (
            "named fields become members, list elements do not",
            set(json!({"f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {"f:image": {}}}}}))
                .with_named_members(),
            json!({"f:spec": {".": {}, "f:containers": {".": {}, "k:{\"name\":\"c\"}": {"f:image": {}}}}}),
        ),
    ];
    for (what, got, want) in table {
        assert_eq!(got.to_fields_v1(), want, "{what}");
    }
    assert!(set(a.clone()).has(&["f:spec", "f:replicas"]));
    assert!(!set(a).has(&["f:spec"]));
}

#[test]
fn fields_v1_parsing() {
    // Keys are re-encoded canonically, so equal elements compare equal.
    let spaced = set(json!({"f:spec": {"k:{ \"protocol\": \"TCP\", \"port\": 80 }": {}}}));
    assert_eq!(
        spaced.to_fields_v1(),
        json!({"f:spec": {"k:{\"port\":80,\"protocol\":\"TCP\"}": {}}})
    );
    for bad in [
        json!({"x:y": {}}),
        json!({"f:a": 1}),
        json!({"k:[1]": {}}),
        json!({"i:z": {}}),
        json!([]),
    ] {
        assert!(FieldSet::from_fields_v1(&bad).is_err(), "{bad}");
    }
}

#[test]
fn paths_render_as_upstream() {
    let s = set(json!({
        "f:metadata": {"f:finalizers": {"v:\"a/b\"": {}}, "f:labels": {"f:app": {}}},
        "f:spec": {"f:replicas": {}, "f:ports": {"k:{\"port\":80,\"protocol\":\"TCP\"}": {".": {}, "f:name": {}}}}
    }));
    assert_eq!(
        s.paths(),
        vec![
            ".metadata.finalizers[=\"a/b\"]",
            ".metadata.labels.app",
            ".spec.replicas",
            ".spec.ports[port=80,protocol=\"TCP\"]",
            ".spec.ports[port=80,protocol=\"TCP\"].name",
        ]
    );
}

#[test]
fn fields_of_a_configuration_table() {
    // (configuration, its fieldsV1)
    let table: Vec<(Value, Value)> = vec![
        (
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "labels": {}}, "data": {"a": "1"}}),
            json!({"f:apiVersion": {}, "f:kind": {}, "f:metadata": {"f:name": {}}, "f:data": {"f:a": {}}}),
        ),
        (
            // Containers by name, ports by containerPort and the defaulted protocol, atomic
            // args and selector, finalizers as a set.
            json!({
                "metadata": {"finalizers": ["a"]},
                "spec": {
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {"spec": {"containers": [{"name": "c", "args": ["x"], "ports": [{"containerPort": 80}]}]}}
                }
            }),
            json!({
                "f:metadata": {"f:finalizers": {"v:\"a\"": {}}},
                "f:spec": {
                    "f:selector": {},
                    "f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {
                        ".": {}, "f:args": {}, "f:name": {},
                        "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {".": {}, "f:containerPort": {}}}
                    }}}}
                }
            }),
        ),
        (
            json!({"spec": {"ports": [{"port": 80, "protocol": "UDP"}], "selector": {"app": "x"}}}),
            json!({"f:spec": {"f:ports": {"k:{\"port\":80,\"protocol\":\"UDP\"}": {".": {}, "f:port": {}, "f:protocol": {}}}, "f:selector": {}}}),
        ),
    ];
    for (config, want) in table {
        assert_eq!(
            fields_of(&config, false).unwrap().to_fields_v1(),
            want,
            "{config}"
        );
    }
    let errors = [
        (
            json!({"spec": {"containers": [{"image": "x"}]}}),
            ".spec.containers: element 0: associative list with keys has an element that omits key field \"name\"",
        ),
        (
            json!({"spec": {"containers": [{"name": "a"}, {"name": "a"}]}}),
            ".spec.containers: duplicate entries for key [name=\"a\"]",
        ),
    ];
    for (config, want) in errors {
        let err = fields_of(&config, false).unwrap_err();
        assert!(err.starts_with(want), "{err}");
    }
}

#[test]
fn compare_table() {
    let live = deployment(1, json!({"a": "1"}), json!([{"name": "c", "image": "i:1"}]));
    // (change, added, modified, removed)
    let table: Vec<(Value, Value, Value, Value)> = vec![
        (
            deployment(2, json!({"a": "1"}), json!([{"name": "c", "image": "i:1"}])),
            json!({}),
            json!({"f:spec": {"f:replicas": {}}}),
            json!({}),
        ),
        (
            deployment(
                1,
                json!({"a": "1", "b": "2"}),
                json!([{"name": "c", "image": "i:1"}, {"name": "d"}]),
            ),
            json!({
                "f:metadata": {"f:labels": {"f:b": {}}},
                "f:spec": {"f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"d\"}": {".": {}, "f:name": {}}}}}}
            }),
            json!({}),
            json!({}),
        ),
        (
            // A null map and an emptied list remove what they held.
            deployment(1, json!(null), json!([])),
            json!({}),
            json!({}),
            json!({
                "f:metadata": {"f:labels": {"f:a": {}}},
                "f:spec": {"f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {".": {}, "f:image": {}, "f:name": {}}}}}}
            }),
        ),
    ];
    for (after, added, modified, removed) in table {
        let c = compare(&live, &after);
        assert_eq!(c.added.to_fields_v1(), added, "added for {after}");
        assert_eq!(c.modified.to_fields_v1(), modified, "modified for {after}");
        assert_eq!(c.removed.to_fields_v1(), removed, "removed for {after}");
    }
    // A map that goes is removed with everything in it.
    let mut without = live.clone();
    without["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("labels");
    assert_eq!(
        compare(&live, &without).removed.to_fields_v1(),
        json!({"f:metadata": {"f:labels": {".": {}, "f:a": {}}}})
    );
}

#[test]
fn merge_table() {
    // (live, configuration, merged)
    let table: Vec<(Value, Value, Value)> = vec![
        (
            json!({"data": {"a": "1", "b": "2"}}),
            json!({"data": {"b": "3"}}),
            json!({"data": {"a": "1", "b": "3"}}),
        ),
        (
            // Containers merge by name; the live-only one keeps its place, a new one goes
            // before the next shared element of the configuration.
            json!({"spec": {"containers": [{"name": "a", "image": "1"}, {"name": "x"}, {"name": "b", "image": "1"}]}}),
            json!({"spec": {"containers": [{"name": "n"}, {"name": "b", "image": "2"}, {"name": "a"}]}}),
            json!({"spec": {"containers": [{"name": "n"}, {"name": "b", "image": "2"}, {"name": "x"}, {"name": "a", "image": "1"}]}}),
        ),
        (
            // Atomic lists and selectors are replaced whole; sets are unioned.
            json!({"metadata": {"finalizers": ["a"]}, "spec": {"selector": {"matchLabels": {"x": "1"}}, "args": ["1", "2"]}}),
            json!({"metadata": {"finalizers": ["b"]}, "spec": {"selector": {"matchLabels": {"y": "1"}}, "args": ["3"]}}),
            json!({"metadata": {"finalizers": ["a", "b"]}, "spec": {"selector": {"matchLabels": {"y": "1"}}, "args": ["3"]}}),
        ),
        (
            // A port without protocol is the TCP one.
            json!({"spec": {"ports": [{"port": 80, "protocol": "TCP", "name": "a"}, {"port": 80, "protocol": "UDP"}]}}),
            json!({"spec": {"ports": [{"port": 80, "name": "b"}]}}),
            json!({"spec": {"ports": [{"port": 80, "protocol": "TCP", "name": "b"}, {"port": 80, "protocol": "UDP"}]}}),
        ),
    ];
    for (live, config, want) in table {
        assert_eq!(merge(&live, &config).unwrap(), want, "{config}");
    }
}

#[test]
fn remove_items_table() {
    let obj = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b"}]}});
    // (paths to remove, result)
    let table: Vec<(Value, Value)> = vec![
        (
            // What the removal empties goes too.
            json!({"f:metadata": {"f:labels": {"f:a": {}}}}),
            json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b"}]}}),
        ),
        (
            json!({"f:spec": {"f:containers": {"k:{\"name\":\"a\"}": {}}}}),
            json!({"metadata": {"labels": {"a": "1"}}, "spec": {"containers": [{"name": "b"}]}}),
        ),
        (
            json!({"f:spec": {"f:containers": {"k:{\"name\":\"a\"}": {"f:image": {}}}}}),
            json!({"metadata": {"labels": {"a": "1"}}, "spec": {"containers": [{"name": "a"}, {"name": "b"}]}}),
        ),
    ];
    for (paths, want) in table {
        assert_eq!(remove_items(&obj, &set(paths.clone())), want, "{paths}");
    }
}

/// Applies each step in turn to the object (`None` before the first), returning it.
fn run(steps: &[(&str, Value, bool)]) -> Result<Value, ApplyError> {
    let mut obj: Option<Value> = None;
    for (manager, config, force) in steps {
        obj = Some(apply(
            obj.as_ref(),
            config,
            &writer(manager),
            Scope::AllButStatus,
            *force,
            NOW,
        )?);
    }
    Ok(obj.unwrap())
}

#[test]
fn apply_scenarios() {
    let two = deployment(
        2,
        json!({"app": "web", "tier": "front"}),
        json!([{"name": "a", "image": "1"}, {"name": "b", "image": "1"}]),
    );
    let one = deployment(
        2,
        json!({"app": "web"}),
        json!([{"name": "a", "image": "1"}]),
    );

    // An applier that drops a label and a container removes them.
    let obj = run(&[("me", two.clone(), false), ("me", one.clone(), false)]).unwrap();
    assert_eq!(obj["metadata"]["labels"], json!({"app": "web"}));
    assert_eq!(
        obj["spec"]["template"]["spec"]["containers"],
        json!([{"name": "a", "image": "1"}])
    );
    assert_eq!(
        owned(&obj, "me", Operation::Apply).unwrap()["f:metadata"],
        json!({"f:labels": {"f:app": {}}})
    );

    // Another applier setting the same value shares it: no conflict, and the label stays
    // when the first drops it.
    let tier = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"tier": "front"}}});
    let obj = run(&[
        ("me", two.clone(), false),
        ("other", tier.clone(), false),
        ("me", one.clone(), false),
    ])
    .unwrap();
    assert_eq!(
        obj["metadata"]["labels"],
        json!({"app": "web", "tier": "front"})
    );
    assert!(
        owned(&obj, "me", Operation::Apply).unwrap()["f:metadata"]["f:labels"]
            .get("f:tier")
            .is_none()
    );
    assert!(
        owned(&obj, "other", Operation::Apply).unwrap()["f:metadata"]["f:labels"]
            .get("f:tier")
            .is_some()
    );

    // A different value is a conflict naming the owner, and changes nothing; force takes
    // the field over.
    let other_tier = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"tier": "back"}}});
    let err = run(&[
        ("me", two.clone(), false),
        ("other", other_tier.clone(), false),
    ])
    .unwrap_err();
    assert_eq!(
        err,
        ApplyError::Conflicts(vec![Conflict {
            manager: "\"me\"".into(),
            field: ".metadata.labels.tier".into()
        }])
    );
    let obj = run(&[("me", two.clone(), false), ("other", other_tier, true)]).unwrap();
    assert_eq!(obj["metadata"]["labels"]["tier"], "back");
    assert!(
        owned(&obj, "me", Operation::Apply).unwrap()["f:metadata"]["f:labels"]
            .get("f:tier")
            .is_none()
    );
    // The former owner no longer owns it, so dropping it from its configuration keeps it.
    let obj = apply(
        Some(&obj),
        &one,
        &writer("me"),
        Scope::AllButStatus,
        false,
        NOW,
    )
    .unwrap();
    assert_eq!(obj["metadata"]["labels"]["tier"], "back");
}

#[test]
fn apply_against_updates_and_status() {
    let config = deployment(
        2,
        json!({"app": "web"}),
        json!([{"name": "a", "image": "1"}]),
    );
    let obj = apply(
        None,
        &config,
        &writer("kubectl"),
        Scope::AllButStatus,
        false,
        NOW,
    )
    .unwrap();

    // kubectl scale takes .spec.replicas through the scale subresource.
    let mut scaled = obj.clone();
    scaled["spec"]["replicas"] = json!(5);
    record_update(
        Some(&obj),
        &mut scaled,
        &sub("kubectl-scale", "scale"),
        Scope::Everything,
        LATER,
    );
    let e = entries(&scaled);
    let scale = e.iter().find(|e| e.manager == "kubectl-scale").unwrap();
    assert_eq!(scale.subresource, "scale");
    assert_eq!(
        scale.fields.to_fields_v1(),
        json!({"f:spec": {"f:replicas": {}}})
    );
    assert!(
        owned(&scaled, "kubectl", Operation::Apply).unwrap()["f:spec"]
            .get("f:replicas")
            .is_none()
    );

    // Re-applying 2 replicas conflicts with it, as upstream words it.
    let err = apply(
        Some(&scaled),
        &config,
        &writer("kubectl"),
        Scope::AllButStatus,
        false,
        LATER,
    )
    .unwrap_err();
    let ApplyError::Conflicts(conflicts) = err else {
        panic!("{err:?}")
    };
    assert_eq!(
        conflict_message(&conflicts),
        "Apply failed with 1 conflict: conflict with \"kubectl-scale\" with subresource \"scale\" using apps/v1: .spec.replicas"
    );
    // Re-applying 5 does not: the field is shared.
    let five = deployment(
        5,
        json!({"app": "web"}),
        json!([{"name": "a", "image": "1"}]),
    );
    let shared = apply(
        Some(&scaled),
        &five,
        &writer("kubectl"),
        Scope::AllButStatus,
        false,
        LATER,
    )
    .unwrap();
    assert!(owned(&shared, "kubectl-scale", Operation::Update).is_some());
    assert!(
        owned(&shared, "kubectl", Operation::Apply).unwrap()["f:spec"]
            .get("f:replicas")
            .is_some()
    );

    // Status writes own status only and never conflict with the spec's applier.
    let mut with_status = scaled.clone();
    with_status["status"] = json!({"replicas": 5});
    record_update(
        Some(&scaled),
        &mut with_status,
        &sub("controller", "status"),
        Scope::StatusOnly,
        LATER,
    );
    assert_eq!(
        owned(&with_status, "controller", Operation::Update).unwrap(),
        json!({"f:status": {"f:replicas": {}}})
    );
    let forced = apply(
        Some(&with_status),
        &config,
        &writer("kubectl"),
        Scope::AllButStatus,
        true,
        LATER,
    )
    .unwrap();
    assert_eq!(forced["spec"]["replicas"], 2);
    assert_eq!(forced["status"]["replicas"], 5);
    assert!(
        owned(&forced, "kubectl-scale", Operation::Update).is_none(),
        "force takes the only field"
    );
    assert!(owned(&forced, "controller", Operation::Update).is_some());
}

#[test]
fn status_applies_own_status_only() {
    let config = deployment(
        2,
        json!({"app": "web"}),
        json!([{"name": "a", "image": "1"}]),
    );
    let obj = apply(
        None,
        &config,
        &writer("kubectl"),
        Scope::AllButStatus,
        false,
        NOW,
    )
    .unwrap();
    let mut status = config.clone();
    status["spec"]["replicas"] = json!(9);
    status["status"] = json!({"replicas": 2});
    let applied = apply(
        Some(&obj),
        &status,
        &sub("controller", "status"),
        Scope::StatusOnly,
        false,
        LATER,
    )
    .unwrap();
    let e = entries(&applied);
    let mine = e.iter().find(|e| e.manager == "controller").unwrap();
    assert_eq!(
        (mine.operation, mine.subresource.as_str()),
        (Operation::Apply, "status")
    );
    assert_eq!(
        mine.fields.to_fields_v1(),
        json!({"f:status": {"f:replicas": {}}})
    );
    assert!(
        owned(&applied, "kubectl", Operation::Apply).unwrap()["f:spec"]
            .get("f:replicas")
            .is_some()
    );
}

#[test]
fn an_identical_apply_changes_nothing() {
    let config = deployment(
        2,
        json!({"app": "web"}),
        json!([{"name": "a", "image": "1"}]),
    );
    let first = apply(
        None,
        &config,
        &writer("me"),
        Scope::AllButStatus,
        false,
        NOW,
    )
    .unwrap();
    let again = apply(
        Some(&first),
        &config,
        &writer("me"),
        Scope::AllButStatus,
        false,
        LATER,
    )
    .unwrap();
    assert_eq!(again, first, "same object, same managedFields, same time");
    let changed = deployment(
        3,
        json!({"app": "web"}),
        json!([{"name": "a", "image": "1"}]),
    );
    let third = apply(
        Some(&first),
        &changed,
        &writer("me"),
        Scope::AllButStatus,
        false,
        LATER,
    )
    .unwrap();
    assert_eq!(entries(&third)[0].time.as_deref(), Some(LATER));
}

#[test]
fn updates_table() {
    let live = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "c", "uid": "u", "resourceVersion": "5", "labels": {"a": "1"}},
        "data": {"k": "v"}
    });
    let mut created = live.clone();
    record_update(
        None,
        &mut created,
        &writer("kubectl-create"),
        Scope::Everything,
        NOW,
    );
    assert_eq!(
        owned(&created, "kubectl-create", Operation::Update).unwrap(),
        json!({"f:data": {".": {}, "f:k": {}}, "f:metadata": {"f:labels": {".": {}, "f:a": {}}}})
    );

    // (what, change, writer, fields of the writer afterwards, of kubectl-create)
    type Change = fn(&mut Value);
    type Case = (
        &'static str,
        Change,
        &'static str,
        Option<Value>,
        Option<Value>,
    );
    let table: Vec<Case> = vec![
        (
            "a new label is the labeller's, the rest stays",
            |o| o["metadata"]["labels"]["b"] = json!("2"),
            "kubectl-label",
            Some(json!({"f:metadata": {"f:labels": {"f:b": {}}}})),
            Some(
                json!({"f:data": {".": {}, "f:k": {}}, "f:metadata": {"f:labels": {".": {}, "f:a": {}}}}),
            ),
        ),
        (
            "a changed value moves to the editor",
            |o| o["data"]["k"] = json!("w"),
            "kubectl-edit",
            Some(json!({"f:data": {"f:k": {}}})),
            Some(json!({"f:data": {}, "f:metadata": {"f:labels": {".": {}, "f:a": {}}}})),
        ),
        (
            "a removed field leaves every owner",
            |o| {
                o["metadata"].as_object_mut().unwrap().remove("labels");
            },
            "kubectl-edit",
            None,
            Some(json!({"f:data": {".": {}, "f:k": {}}})),
        ),
        (
            "system metadata is nobody's",
            |o| o["metadata"]["resourceVersion"] = json!("9"),
            "kubectl-edit",
            None,
            Some(
                json!({"f:data": {".": {}, "f:k": {}}, "f:metadata": {"f:labels": {".": {}, "f:a": {}}}}),
            ),
        ),
        (
            "[{}] clears the managed fields, and the object stays untracked",
            |o| {
                o["metadata"]["managedFields"] = json!([{}]);
                o["data"]["k"] = json!("w");
            },
            "kubectl-edit",
            None,
            None,
        ),
    ];
    for (what, change, manager, mine, creator) in table {
        let mut new = created.clone();
        change(&mut new);
        record_update(
            Some(&created),
            &mut new,
            &writer(manager),
            Scope::Everything,
            LATER,
        );
        assert_eq!(
            owned(&new, manager, Operation::Update),
            mine,
            "{what}: {manager}"
        );
        assert_eq!(
            owned(&new, "kubectl-create", Operation::Update),
            creator,
            "{what}: creator"
        );
    }

    // A request's own managedFields replace the live ones; undecodable ones are ignored.
    let mut replaced = created.clone();
    replaced["metadata"]["managedFields"] = json!([{"manager": "x", "operation": "Update", "apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {"f:k": {}}}}]);
    record_update(
        Some(&created),
        &mut replaced,
        &writer("y"),
        Scope::Everything,
        LATER,
    );
    assert_eq!(entries(&replaced).len(), 1);
    assert_eq!(entries(&replaced)[0].manager, "x");
    let mut garbage = created.clone();
    garbage["metadata"]["managedFields"] = json!([{"manager": "x"}]);
    record_update(
        Some(&created),
        &mut garbage,
        &writer("y"),
        Scope::Everything,
        LATER,
    );
    assert_eq!(entries(&garbage), entries(&created));
}

#[test]
fn create_owns_structs_through_their_fields() {
    let mut d = deployment(
        1,
        json!({"app": "web"}),
        json!([{"name": "c", "image": "i", "resources": {"limits": {"cpu": "1"}}}]),
    );
    record_update(
        None,
        &mut d,
        &writer("kubectl-create"),
        Scope::AllButStatus,
        NOW,
    );
    assert_eq!(
        owned(&d, "kubectl-create", Operation::Update).unwrap(),
        json!({
            "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
            "f:spec": {"f:replicas": {}, "f:selector": {}, "f:template": {"f:spec": {"f:containers": {
                "k:{\"name\":\"c\"}": {".": {}, "f:image": {}, "f:name": {}, "f:resources": {"f:limits": {".": {}, "f:cpu": {}}}}
            }}}}
        })
    );
}

#[test]
fn update_managers_are_capped() {
    let mut obj =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {}});
    for i in 0..12 {
        let before = obj.clone();
        obj["data"][format!("k{i}")] = json!("v");
        let time = format!("2030-01-01T00:00:{i:02}Z");
        record_update(
            Some(&before).filter(|_| i > 0),
            &mut obj,
            &writer(&format!("m{i:02}")),
            Scope::Everything,
            &time,
        );
    }
    let e = entries(&obj);
    assert_eq!(e.len(), MAX_UPDATE_MANAGERS);
    let ancient = e.iter().find(|e| e.manager == ANCIENT_CHANGES).unwrap();
    assert!(ancient.fields.has(&["f:data", "f:k0"]) && ancient.fields.has(&["f:data", "f:k2"]));
    assert!(e.iter().any(|e| e.manager == "m11"));
}

#[test]
fn conflict_messages() {
    let c = |m: &str, f: &str| Conflict {
        manager: m.into(),
        field: f.into(),
    };
    assert_eq!(
        conflict_message(&[
            c("\"a\"", ".x"),
            c("\"b\" using v1", ".y"),
            c("\"a\"", ".z")
        ]),
        "Apply failed with 3 conflicts: conflicts with \"a\":\n- .x\n- .z\nconflicts with \"b\" using v1:\n- .y"
    );
}

#[test]
fn client_side_apply_upgrades_without_conflicts() {
    // kubectl apply (client-side) created the object: everything is kubectl-client-side-apply's.
    let last = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 2}});
    let mut live = deployment(2, json!({"app": "web"}), json!([{"name": "a"}]));
    live["metadata"]["annotations"] = json!({LAST_APPLIED: last.to_string()});
    record_update(
        None,
        &mut live,
        &writer("kubectl-client-side-apply"),
        Scope::AllButStatus,
        NOW,
    );
    // kubectl apply --server-side with another value takes over what the annotation still
    // describes; another manager name would conflict.
    let config = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 3}});
    let upgraded = apply(
        Some(&live),
        &config,
        &writer("kubectl"),
        Scope::AllButStatus,
        false,
        LATER,
    )
    .unwrap();
    assert_eq!(upgraded["spec"]["replicas"], 3);
    let annotation: Value = serde_json::from_str(
        upgraded["metadata"]["annotations"][LAST_APPLIED]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(annotation["spec"]["replicas"], 3);
    assert!(
        apply(
            Some(&live),
            &config,
            &writer("someone"),
            Scope::AllButStatus,
            false,
            LATER
        )
        .is_err()
    );
}

#[test]
fn forget_absent_drops_unknown_fields() {
    let config = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}, "bogus": 1});
    let mut obj = apply(None, &config, &writer("me"), Scope::Everything, false, NOW).unwrap();
    obj.as_object_mut().unwrap().remove("bogus");
    forget_absent(&mut obj, &writer("me"));
    assert_eq!(
        owned(&obj, "me", Operation::Apply).unwrap(),
        json!({"f:data": {"f:k": {}}})
    );
}

/// A client sending back the managed fields it read before a later write (their
/// timestamps older than the live ones) changes nothing: the live entries stay, so the
/// write is a no-op whatever second it lands in (upstream's
/// IgnoreManagedFieldsTimestampsTransformer).
#[test]
fn an_update_that_only_rewinds_timestamps_keeps_the_live_entries() {
    let mut created = deployment(2, json!({"app": "a"}), json!([{"name": "c", "image": "i"}]));
    record_update(None, &mut created, &writer("kubectl-create"), Scope::AllButStatus, NOW);
    let mut live = created.clone();
    live["spec"]["replicas"] = json!(3);
    record_update(Some(&created), &mut live, &writer("kubectl-create"), Scope::AllButStatus, LATER);
    assert_eq!(entries(&live)[0].time.as_deref(), Some(LATER));
    // The same object back, with the entries as they were at creation.
    let mut stale = live.clone();
    stale["metadata"]["managedFields"] = created["metadata"]["managedFields"].clone();
    record_update(Some(&live), &mut stale, &writer("kubectl-create"), Scope::AllButStatus, LATER);
    assert_eq!(stale, live);
    // A real change still takes the new time.
    let mut changed = stale.clone();
    changed["spec"]["replicas"] = json!(4);
    changed["metadata"]["managedFields"] = created["metadata"]["managedFields"].clone();
    record_update(Some(&live), &mut changed, &writer("kubectl-create"), Scope::AllButStatus, "2030-01-01T00:09:00Z");
    assert_eq!(entries(&changed)[0].time.as_deref(), Some("2030-01-01T00:09:00Z"));
}
