//! The front door, through HTTPS as clients see it: who gets in (certificates, tokens,
//! bootstrap tokens, anonymous), what RBAC lets them do (a table of cases over real Role and
//! binding objects), refusals as `Status` bodies, reviews, impersonation and the default
//! policy.

mod common;

use anyhow::Result;
use base64::Engine;
use bytes::Bytes;
use common::{Backend, Http, Identity, StoreHandle, TestServer, test_config};
use serde_json::{Value, json};

async fn server() -> Result<(StoreHandle, TestServer)> {
    let store = StoreHandle::open(Backend::Embedded).await?;
    let server = TestServer::start_with_tokens(
        store.store.clone(),
        test_config(),
        "# static tokens\nt0ken-for-carol,carol,c-1,\"auditors,ops\"\n",
    )
    .await?;
    Ok((store, server))
}

fn as_user(server: &TestServer, user: &str, groups: &[&str]) -> Http {
    Http::as_identity(server, Identity::Cert(user, groups)).unwrap()
}

fn assert_status(reply: &common::Reply, code: u16, reason: &str) -> Value {
    let body = reply.json();
    assert_eq!(reply.status, code, "{body}");
    assert_eq!(body["kind"], "Status", "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["reason"], reason, "{body}");
    body
}

#[tokio::test]
async fn without_credentials_only_health_and_version_answer() -> Result<()> {
    let (_store, server) = server().await?;
    let anon = Http::as_identity(&server, Identity::Anonymous)?;
    for path in ["/healthz", "/livez", "/readyz", "/version"] {
        let reply = anon.get(path).await?;
        assert_eq!(reply.status, 200, "{path}: {}", String::from_utf8_lossy(&reply.body));
    }
    for path in ["/api/v1/namespaces", "/apis", "/api", "/metrics", "/openapi/v2", "/api/v1/namespaces/default/pods/x"] {
        let reply = anon.get(path).await?;
        let body = assert_status(&reply, 401, "Unauthorized");
        assert_eq!(body["message"], "Unauthorized");
    }
    // A malformed Authorization header or an unknown token is refused everywhere, even
    // where anonymous access would do.
    for header in ["Basic YWxpY2U6cHc=", "Bearer", "Bearer a b", "Bearer not-a-token", "Bearer abcdef.0123456789abcdef"] {
        let reply = anon
            .request("GET", "/healthz", &[("authorization", header)], Bytes::new())
            .await?;
        assert_status(&reply, 401, "Unauthorized");
    }
    // A huge header is refused with a 4xx, and the server goes on serving.
    let huge = format!("Bearer {}", "x".repeat(200_000));
    match anon.request("GET", "/api/v1/namespaces", &[("authorization", &huge)], Bytes::new()).await {
        Ok(reply) => assert!((400..500).contains(&reply.status), "{}", reply.status),
        Err(e) => {
            // hyper may close the connection on an oversized head instead of answering.
            let text = format!("{e:#}");
            assert!(!text.contains("timed out"), "{text}");
        }
    }
    assert_eq!(Http::new(&server).get("/api/v1/namespaces").await?.status, 200);
    Ok(())
}

#[tokio::test]
async fn a_certificate_from_another_ca_never_gets_in() -> Result<()> {
    let (_store, server) = server().await?;
    let other_dir = tempfile::tempdir()?;
    let other = coxswain_apiserver::Security::load_or_create(
        other_dir.path(),
        coxswain_apiserver::SubjectNames::loopback(None),
    )?;
    // A kubeconfig whose client certificate claims system:masters, signed by a foreign CA,
    // but trusting the real server's CA.
    let forged = other.kubeconfig(&server.url(""), "mallory", &["system:masters"])?;
    let real_ca = base64::engine::general_purpose::STANDARD.encode(server.security.ca().cert_pem());
    let forged: String = forged
        .lines()
        .map(|l| match l.trim_start().strip_prefix("certificate-authority-data: ") {
            Some(_) => format!("    certificate-authority-data: {real_ca}"),
            None => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let path = other_dir.path().join("forged.kubeconfig");
    std::fs::write(&path, forged)?;
    let out = tokio::process::Command::new(common::kubectl_path())
        .arg("--kubeconfig")
        .arg(&path)
        .args(["get", "namespaces", "--request-timeout=10s"])
        .env("HOME", other_dir.path())
        .output()
        .await?;
    assert!(!out.status.success(), "a forged certificate was accepted");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("certificate") || stderr.contains("tls") || stderr.contains("Unauthorized"),
        "{stderr}"
    );
    // The server is unharmed.
    assert_eq!(Http::new(&server).get("/api/v1/namespaces").await?.status, 200);
    Ok(())
}

#[tokio::test]
async fn a_user_without_a_role_is_forbidden_with_upstreams_message() -> Result<()> {
    let (_store, server) = server().await?;
    let alice = as_user(&server, "alice", &["dev"]);
    let reply = alice.get("/api/v1/namespaces/default/pods").await?;
    let body = assert_status(&reply, 403, "Forbidden");
    assert_eq!(
        body["message"],
        r#"pods is forbidden: User "alice" cannot list resource "pods" in API group "" in the namespace "default""#
    );
    assert_eq!(body["details"]["kind"], "pods");
    let reply = alice
        .post_json("/apis/apps/v1/namespaces/default/deployments", &json!({"metadata": {"name": "d"}}))
        .await?;
    let body = assert_status(&reply, 403, "Forbidden");
    assert!(
        body["message"].as_str().unwrap().contains(r#"cannot create resource "deployments" in API group "apps""#),
        "{body}"
    );
    let reply = alice.get("/metrics").await?;
    let body = assert_status(&reply, 403, "Forbidden");
    assert_eq!(body["message"], r#"forbidden: User "alice" cannot get path "/metrics""#);
    // Discovery is open to every authenticated user.
    assert_eq!(alice.get("/apis").await?.status, 200);
    assert_eq!(alice.get("/api/v1").await?.status, 200);
    // Nothing was created by the refused request.
    assert_eq!(Http::new(&server).get("/apis/apps/v1/namespaces/default/deployments/d").await?.status, 404);
    Ok(())
}

async fn create(admin: &Http, path: &str, body: Value) -> Result<()> {
    let reply = admin.post_json(path, &body).await?;
    anyhow::ensure!(reply.status == 201, "create {path}: {} {}", reply.status, reply.json());
    Ok(())
}

#[tokio::test]
async fn rbac_allows_and_denies_what_the_table_says() -> Result<()> {
    let (_store, server) = server().await?;
    let admin = Http::new(&server);
    create(&admin, "/api/v1/namespaces", json!({"metadata": {"name": "team"}})).await?;
    create(&admin, "/api/v1/namespaces/team/configmaps", json!({"metadata": {"name": "settings"}, "data": {"a": "1"}})).await?;
    create(&admin, "/api/v1/namespaces/team/configmaps", json!({"metadata": {"name": "other"}})).await?;
    create(
        &admin,
        "/apis/rbac.authorization.k8s.io/v1/namespaces/team/roles",
        json!({"metadata": {"name": "settings-editor"}, "rules": [
            {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["settings"], "verbs": ["get", "update", "patch"]},
            {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["get"]},
        ]}),
    )
    .await?;
    // Bindings take effect for the very next request.
    create(
        &admin,
        "/apis/rbac.authorization.k8s.io/v1/namespaces/team/rolebindings",
        json!({"metadata": {"name": "alice-settings"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "settings-editor"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]}),
    )
    .await?;
    create(
        &admin,
        "/apis/rbac.authorization.k8s.io/v1/namespaces/team/rolebindings",
        json!({"metadata": {"name": "ops-view"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "ops"}]}),
    )
    .await?;
    let alice = as_user(&server, "alice", &[]);
    let olga = as_user(&server, "olga", &["ops"]);
    let carol = Http::as_identity(&server, Identity::Token("t0ken-for-carol"))?;
    let cases: Vec<(&str, &Http, &str, &str, u16)> = vec![
        ("resourceNames: the named object", &alice, "GET", "/api/v1/namespaces/team/configmaps/settings", 200),
        ("resourceNames: another object", &alice, "GET", "/api/v1/namespaces/team/configmaps/other", 403),
        ("resourceNames: no list", &alice, "GET", "/api/v1/namespaces/team/configmaps", 403),
        ("another namespace", &alice, "GET", "/api/v1/namespaces/default/configmaps/settings", 403),
        ("a subresource it names", &alice, "GET", "/api/v1/namespaces/team/pods/p/status", 404),
        ("not the main resource", &alice, "GET", "/api/v1/namespaces/team/pods/p", 403),
        ("view in its namespace", &olga, "GET", "/api/v1/namespaces/team/configmaps", 200),
        ("view has no secrets", &olga, "GET", "/api/v1/namespaces/team/secrets", 403),
        ("view is namespaced", &olga, "GET", "/api/v1/namespaces/default/configmaps", 403),
        ("view is read-only", &olga, "DELETE", "/api/v1/namespaces/team/configmaps/other", 403),
        ("a static token's groups count", &carol, "GET", "/api/v1/namespaces/team/configmaps", 200),
        ("a static token is not admin", &carol, "GET", "/api/v1/nodes", 403),
    ];
    for (what, who, method, path, want) in cases {
        let reply = who.request(method, path, &[], Bytes::new()).await?;
        assert_eq!(reply.status, want, "{what}: {method} {path}: {}", reply.json());
    }
    // Update through a resourceNames rule.
    let mut cm = alice.get("/api/v1/namespaces/team/configmaps/settings").await?.json();
    cm["data"]["a"] = json!("2");
    assert_eq!(alice.put_json("/api/v1/namespaces/team/configmaps/settings", &cm).await?.status, 200);
    // Removing the binding takes effect for the very next request.
    let reply = admin
        .request("DELETE", "/apis/rbac.authorization.k8s.io/v1/namespaces/team/rolebindings/alice-settings", &[], Bytes::new())
        .await?;
    assert_eq!(reply.status, 200);
    let reply = alice.get("/api/v1/namespaces/team/configmaps/settings").await?;
    assert_status(&reply, 403, "Forbidden");
    Ok(())
}

#[tokio::test]
async fn reviews_answer_can_i_and_whoami() -> Result<()> {
    let (_store, server) = server().await?;
    let alice = as_user(&server, "alice", &["dev"]);
    let review = |verb: &str, resource: &str, ns: &str| {
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {"verb": verb, "resource": resource, "namespace": ns}}})
    };
    let reply = alice
        .post_json("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", &review("list", "pods", "default"))
        .await?;
    assert_eq!(reply.status, 201, "{}", reply.json());
    assert_eq!(reply.json()["status"]["allowed"], false);
    let reply = alice
        .post_json(
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            &json!({"spec": {"nonResourceAttributes": {"verb": "get", "path": "/apis"}}}),
        )
        .await?;
    assert_eq!(reply.json()["status"]["allowed"], true, "{}", reply.json());
    // Neither kind of attributes: 422 naming the field.
    let reply = alice
        .post_json("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", &json!({"spec": {}}))
        .await?;
    let body = assert_status(&reply, 422, "Invalid");
    assert_eq!(body["details"]["causes"][0]["field"], "spec.resourceAttributes");
    // whoami
    let reply = alice
        .post_json("/apis/authentication.k8s.io/v1/selfsubjectreviews", &json!({}))
        .await?;
    assert_eq!(reply.status, 201);
    let info = &reply.json()["status"]["userInfo"];
    assert_eq!(info["username"], "alice");
    assert_eq!(info["groups"], json!(["dev", "system:authenticated"]));
    // Reviews are create-only and never stored (alice may not even ask to list them).
    let reply = alice.get("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews").await?;
    assert_status(&reply, 403, "Forbidden");
    let reply = Http::new(&server).get("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews").await?;
    assert_status(&reply, 405, "MethodNotAllowed");
    // Asking about someone else takes more than basic-user.
    let sar = json!({"spec": {"user": "bob", "resourceAttributes": {"verb": "get", "resource": "pods", "namespace": "default"}}});
    let reply = alice
        .post_json("/apis/authorization.k8s.io/v1/subjectaccessreviews", &sar)
        .await?;
    assert_status(&reply, 403, "Forbidden");
    let admin = Http::new(&server);
    let reply = admin
        .post_json("/apis/authorization.k8s.io/v1/subjectaccessreviews", &sar)
        .await?;
    assert_eq!(reply.json()["status"]["allowed"], false, "{}", reply.json());
    let masters = json!({"spec": {"user": "x", "groups": ["system:masters"], "resourceAttributes": {"verb": "delete", "resource": "nodes"}}});
    let reply = admin
        .post_json("/apis/authorization.k8s.io/v1/subjectaccessreviews", &masters)
        .await?;
    assert_eq!(reply.json()["status"]["allowed"], true, "{}", reply.json());
    // Rules review: the default rules every user has.
    let reply = alice
        .post_json(
            "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
            &json!({"spec": {"namespace": "default"}}),
        )
        .await?;
    let status = &reply.json()["status"];
    assert!(
        status["resourceRules"].as_array().unwrap().iter().any(|r| r["resources"]
            .as_array()
            .unwrap()
            .contains(&json!("selfsubjectaccessreviews"))),
        "{status}"
    );
    assert!(status["nonResourceRules"].as_array().is_some_and(|r| !r.is_empty()), "{status}");
    Ok(())
}

#[tokio::test]
async fn impersonation_needs_the_impersonate_verb() -> Result<()> {
    let (_store, server) = server().await?;
    let alice = as_user(&server, "alice", &[]);
    let reply = alice
        .request("GET", "/api/v1/namespaces", &[("impersonate-user", "kubernetes-admin"), ("impersonate-group", "system:masters")], Bytes::new())
        .await?;
    let body = assert_status(&reply, 403, "Forbidden");
    assert!(
        body["message"].as_str().unwrap().contains(r#"User "alice" cannot impersonate resource "users""#),
        "{body}"
    );
    // The admin may: acting as alice, the admin is refused what alice is refused.
    let admin = Http::new(&server);
    let reply = admin
        .request("GET", "/api/v1/namespaces/default/pods", &[("impersonate-user", "alice")], Bytes::new())
        .await?;
    let body = assert_status(&reply, 403, "Forbidden");
    assert!(body["message"].as_str().unwrap().contains(r#"User "alice""#), "{body}");
    let reply = admin
        .request("GET", "/api/v1/namespaces", &[("impersonate-group", "system:masters")], Bytes::new())
        .await?;
    assert_status(&reply, 400, "BadRequest");
    // kubectl --as
    let out = server.kubectl_fails(&["get", "pods", "--as", "alice"]).await?;
    assert!(out.contains(r#"User "alice" cannot list resource "pods""#), "{out}");
    let out = server
        .kubectl(&["get", "namespaces", "--as", "alice", "--as-group", "system:masters", "-o", "name"])
        .await?;
    assert!(out.contains("namespace/default"), "{out}");
    Ok(())
}

#[tokio::test]
async fn bootstrap_tokens_authenticate_until_they_expire() -> Result<()> {
    let (_store, server) = server().await?;
    let admin = Http::new(&server);
    let secret = |id: &str, secret: &str, expires_in: i64| {
        let at = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(expires_in);
        json!({"metadata": {"name": format!("bootstrap-token-{id}")},
            "type": "bootstrap.kubernetes.io/token",
            "stringData": {"token-id": id, "token-secret": secret, "expiration": at.to_string(),
                "usage-bootstrap-authentication": "true",
                "auth-extra-groups": "system:bootstrappers:coxswain:default-node-token"}})
    };
    create(&admin, "/api/v1/namespaces/kube-system/secrets", secret("abcdef", "0123456789abcdef", 3600)).await?;
    create(&admin, "/api/v1/namespaces/kube-system/secrets", secret("expird", "0123456789abcdef", -10)).await?;
    let joiner = Http::as_identity(&server, Identity::Token("abcdef.0123456789abcdef"))?;
    let reply = joiner
        .post_json("/apis/authentication.k8s.io/v1/selfsubjectreviews", &json!({}))
        .await?;
    assert_eq!(reply.status, 201, "{}", reply.json());
    let info = &reply.json()["status"]["userInfo"];
    assert_eq!(info["username"], "system:bootstrap:abcdef");
    assert!(info["groups"].as_array().unwrap().contains(&json!("system:bootstrappers")), "{info}");
    assert_status(&joiner.get("/api/v1/namespaces/kube-system/secrets").await?, 403, "Forbidden");
    for token in ["abcdef.0123456789abcdee", "expird.0123456789abcdef", "zzzzzz.0123456789abcdef"] {
        let other = Http::as_identity(&server, Identity::Token(token))?;
        assert_status(&other.get("/version").await?, 401, "Unauthorized");
    }
    Ok(())
}

#[tokio::test]
async fn the_default_policy_comes_back_unless_autoupdate_is_off() -> Result<()> {
    let store = StoreHandle::open(Backend::Embedded).await?;
    let server = TestServer::start(store.store.clone()).await?;
    let admin = Http::new(&server);
    let path = "/apis/rbac.authorization.k8s.io/v1/clusterroles/system:basic-user";
    let mut role = admin.get(path).await?.json();
    assert_eq!(role["metadata"]["labels"]["kubernetes.io/bootstrapping"], "rbac-defaults");
    role["rules"] = json!([]);
    assert_eq!(admin.put_json(path, &role).await?.status, 200);
    let mut edit = admin.get("/apis/rbac.authorization.k8s.io/v1/clusterroles/edit").await?.json();
    edit["metadata"]["annotations"]["rbac.authorization.kubernetes.io/autoupdate"] = json!("false");
    edit["aggregationRule"] = json!({"clusterRoleSelectors": [{"matchLabels": {"custom": "true"}}]});
    assert_eq!(admin.put_json("/apis/rbac.authorization.k8s.io/v1/clusterroles/edit", &edit).await?.status, 200);
    drop(server);
    let server = TestServer::start(store.store.clone()).await?;
    let admin = Http::new(&server);
    let role = admin.get(path).await?.json();
    assert!(!role["rules"].as_array().unwrap().is_empty(), "system:basic-user was not restored: {role}");
    let edit = admin.get("/apis/rbac.authorization.k8s.io/v1/clusterroles/edit").await?.json();
    assert_eq!(edit["aggregationRule"]["clusterRoleSelectors"][0]["matchLabels"]["custom"], "true");
    Ok(())
}

async fn token_for(admin: &Http, sa: &str, body: Value) -> Result<common::Reply> {
    admin
        .post_json(&format!("/api/v1/namespaces/default/serviceaccounts/{sa}/token"), &body)
        .await
}

#[tokio::test]
async fn service_account_tokens_are_bound_expiring_and_unforgeable() -> Result<()> {
    let (_store, server) = server().await?;
    let admin = Http::new(&server);
    create(&admin, "/api/v1/namespaces/default/serviceaccounts", json!({"metadata": {"name": "builder"}})).await?;
    create(
        &admin,
        "/api/v1/namespaces/default/pods",
        json!({"metadata": {"name": "job-0"}, "spec": {"serviceAccountName": "builder", "containers": [{"name": "c", "image": "busybox"}]}}),
    )
    .await?;

    // Too short a lifetime is refused with the field named; a missing account is 404.
    let reply = token_for(&admin, "builder", json!({"spec": {"expirationSeconds": 100}})).await?;
    let body = assert_status(&reply, 422, "Invalid");
    assert_eq!(body["details"]["causes"][0]["field"], "spec.expirationSeconds");
    assert_status(&token_for(&admin, "nobody", json!({"spec": {}})).await?, 404, "NotFound");

    let reply = token_for(&admin, "builder", json!({"spec": {"expirationSeconds": 600}})).await?;
    assert_eq!(reply.status, 201, "{}", reply.json());
    let token = reply.json()["status"]["token"].as_str().unwrap().to_owned();
    assert!(reply.json()["status"]["expirationTimestamp"].as_str().is_some());
    let sa = Http::as_identity(&server, Identity::Token(&token))?;
    let who = sa.post_json("/apis/authentication.k8s.io/v1/selfsubjectreviews", &json!({})).await?.json();
    assert_eq!(who["status"]["userInfo"]["username"], "system:serviceaccount:default:builder");
    let groups = who["status"]["userInfo"]["groups"].as_array().unwrap().clone();
    for g in ["system:serviceaccounts", "system:serviceaccounts:default", "system:authenticated"] {
        assert!(groups.contains(&json!(g)), "{groups:?}");
    }
    // No role yet; a RoleBinding to the account takes effect at once.
    assert_status(&sa.get("/api/v1/namespaces/default/pods").await?, 403, "Forbidden");
    create(
        &admin,
        "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
        json!({"metadata": {"name": "builder-view"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "ServiceAccount", "name": "builder", "namespace": "default"}]}),
    )
    .await?;
    assert_eq!(sa.get("/api/v1/namespaces/default/pods").await?.status, 200);
    // Anyone with a token may fetch the keys that verify it.
    let jwks = sa.get("/openid/v1/jwks").await?;
    assert_eq!(jwks.status, 200);
    assert_eq!(jwks.json()["keys"][0]["alg"], "ES256");

    // A tampered signature, and a token of another cluster's key, are refused.
    let mut tampered = token.clone().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered)?;
    let other = tempfile::tempdir()?;
    let (foreign, _) = coxswain_auth::satoken::TokenSigner::generate(coxswain_auth::satoken::DEFAULT_ISSUER)?;
    let now = jiff::Timestamp::now().as_second();
    let sa_uid = admin.get("/api/v1/namespaces/default/serviceaccounts/builder").await?.json()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned();
    let forged = foreign.sign(&coxswain_auth::satoken::claims(
        coxswain_auth::satoken::DEFAULT_ISSUER,
        "default",
        coxswain_auth::satoken::ObjectRef { name: "builder".into(), uid: sa_uid },
        None,
        None,
        vec![coxswain_auth::satoken::DEFAULT_ISSUER.into()],
        now,
        600,
    ))?;
    drop(other);
    for bad in [&tampered, &forged] {
        let client = Http::as_identity(&server, Identity::Token(bad))?;
        assert_status(&client.get("/api/v1/namespaces/default/pods").await?, 401, "Unauthorized");
    }

    // A token for another audience does not open the API, but TokenReview says whose it is.
    let reply = token_for(&admin, "builder", json!({"spec": {"audiences": ["vault"]}})).await?;
    let vault = reply.json()["status"]["token"].as_str().unwrap().to_owned();
    let client = Http::as_identity(&server, Identity::Token(&vault))?;
    assert_status(&client.get("/api/v1/namespaces/default/pods").await?, 401, "Unauthorized");
    let review = admin
        .post_json(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            &json!({"spec": {"token": vault, "audiences": ["vault"]}}),
        )
        .await?
        .json();
    assert_eq!(review["status"]["authenticated"], true, "{review}");
    assert_eq!(review["status"]["user"]["username"], "system:serviceaccount:default:builder");
    let review = admin
        .post_json("/apis/authentication.k8s.io/v1/tokenreviews", &json!({"spec": {"token": vault}}))
        .await?
        .json();
    assert_eq!(review["status"]["authenticated"], false, "{review}");

    // A token bound to a pod dies with the pod.
    let pod_uid = admin.get("/api/v1/namespaces/default/pods/job-0").await?.json()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned();
    let reply = token_for(
        &admin,
        "builder",
        json!({"spec": {"boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "job-0", "uid": pod_uid}}}),
    )
    .await?;
    assert_eq!(reply.status, 201, "{}", reply.json());
    let bound = reply.json()["status"]["token"].as_str().unwrap().to_owned();
    let pod_client = Http::as_identity(&server, Identity::Token(&bound))?;
    let who = pod_client.post_json("/apis/authentication.k8s.io/v1/selfsubjectreviews", &json!({})).await?.json();
    assert_eq!(who["status"]["userInfo"]["extra"]["authentication.kubernetes.io/pod-name"], json!(["job-0"]));
    let reply = admin
        .request("DELETE", "/api/v1/namespaces/default/pods/job-0?gracePeriodSeconds=0", &[], Bytes::new())
        .await?;
    assert_eq!(reply.status, 200, "{}", reply.json());
    assert_eq!(admin.get("/api/v1/namespaces/default/pods/job-0").await?.status, 404);
    assert_status(&pod_client.get("/api/v1/namespaces/default/pods").await?, 401, "Unauthorized");
    // And every token of an account dies with the account.
    let reply = admin
        .request("DELETE", "/api/v1/namespaces/default/serviceaccounts/builder", &[], Bytes::new())
        .await?;
    assert_eq!(reply.status, 200);
    assert_status(&sa.get("/api/v1/namespaces/default/pods").await?, 401, "Unauthorized");
    Ok(())
}

#[tokio::test]
async fn secrets_are_unreadable_at_rest_and_unchanged_through_the_api() -> Result<()> {
    let store = StoreHandle::open(Backend::Embedded).await?;
    let key = base64::engine::general_purpose::STANDARD.encode([42u8; 32]);
    let config = coxswain_apiserver::parse_encryption_config(&format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n\
         - resources: [secrets]\n  providers:\n  - aesgcm:\n      keys:\n      - name: key1\n        secret: {key}\n  - identity: {{}}\n"
    ))
    .map_err(anyhow::Error::msg)?;
    let encrypted: std::sync::Arc<dyn coxswain_store::Store> =
        std::sync::Arc::new(coxswain_store::EncryptedStore::new(store.store.clone(), config));
    let server = TestServer::start(encrypted).await?;
    let admin = Http::new(&server);
    create(
        &admin,
        "/api/v1/namespaces/default/secrets",
        json!({"metadata": {"name": "db"}, "stringData": {"password": "hunter2-very-secret"}}),
    )
    .await?;
    create(&admin, "/api/v1/namespaces/default/configmaps", json!({"metadata": {"name": "plain"}, "data": {"k": "visible-value"}})).await?;
    let (raw, _) = store.store.get("/registry/core/secrets/default/db", None).await?;
    let raw = raw.expect("the secret is stored").value;
    assert!(raw.starts_with(b"k8s:enc:aesgcm:v1:key1:"), "{:?}", &raw[..30.min(raw.len())]);
    let b64 = base64::engine::general_purpose::STANDARD.encode("hunter2-very-secret");
    for needle in [b64.as_bytes(), b"hunter2".as_slice(), b"password".as_slice()] {
        assert!(!raw.windows(needle.len()).any(|w| w == needle), "plaintext at rest");
    }
    let (cm, _) = store.store.get("/registry/core/configmaps/default/plain", None).await?;
    assert!(String::from_utf8_lossy(&cm.unwrap().value).contains("visible-value"));
    let secret = admin.get("/api/v1/namespaces/default/secrets/db").await?.json();
    assert_eq!(secret["data"]["password"], b64);
    let listed = admin.get("/api/v1/namespaces/default/secrets?resourceVersion=0").await?.json();
    assert!(listed["items"].as_array().unwrap().iter().any(|s| s["data"]["password"] == b64));
    Ok(())
}

#[tokio::test]
async fn a_restricted_namespace_refuses_a_privileged_pod_naming_the_field() -> Result<()> {
    let (_store, server) = server().await?;
    let admin = Http::new(&server);
    let reply = admin
        .post_json(
            "/api/v1/namespaces",
            &json!({"metadata": {"name": "bad", "labels": {"pod-security.kubernetes.io/enforce": "strict"}}}),
        )
        .await?;
    let body = assert_status(&reply, 422, "Invalid");
    assert_eq!(body["details"]["causes"][0]["field"], "metadata.labels[pod-security.kubernetes.io/enforce]");
    create(
        &admin,
        "/api/v1/namespaces",
        json!({"metadata": {"name": "locked", "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}),
    )
    .await?;
    server.create_default_service_account("locked").await?;
    let privileged = json!({"metadata": {"name": "root"}, "spec": {"containers": [
        {"name": "shell", "image": "busybox", "securityContext": {"privileged": true}}]}});
    let reply = admin.post_json("/api/v1/namespaces/locked/pods", &privileged).await?;
    let body = assert_status(&reply, 403, "Forbidden");
    let message = body["message"].as_str().unwrap();
    assert!(message.starts_with(r#"pods "root" is forbidden: violates PodSecurity "restricted:latest": privileged (container "shell" must not set securityContext.privileged=true)"#), "{message}");
    // The same pod is fine where nothing is enforced; a hardened pod is fine in `locked`.
    assert_eq!(admin.post_json("/api/v1/namespaces/default/pods", &privileged).await?.status, 201);
    let hardened = json!({"metadata": {"name": "ok"}, "spec": {
        "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "app", "image": "busybox", "securityContext": {
            "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]}});
    assert_eq!(admin.post_json("/api/v1/namespaces/locked/pods", &hardened).await?.status, 201);
    // kubectl shows the refusal as users know it.
    let manifest = "apiVersion: v1\nkind: Pod\nmetadata: {name: root2, namespace: locked}\nspec:\n  hostNetwork: true\n  containers: [{name: c, image: busybox}]\n";
    let out = server.kubectl_with_input(&["apply", "-f", "-"], Some(manifest)).await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("host namespaces (hostNetwork=true)"), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn a_kubelet_identity_cannot_touch_another_nodes_objects() -> Result<()> {
    let (_store, server) = server().await?;
    let admin = Http::new(&server);
    for n in ["n1", "n2"] {
        create(&admin, "/api/v1/nodes", json!({"metadata": {"name": n}})).await?;
        create(
            &admin,
            "/api/v1/namespaces/default/pods",
            json!({"metadata": {"name": format!("on-{n}")}, "spec": {"nodeName": n, "containers": [{"name": "c", "image": "busybox"}]}}),
        )
        .await?;
    }
    let kubelet = as_user(&server, "system:node:n1", &["system:nodes"]);
    let patch = |path: &str| {
        let path = path.to_owned();
        let kubelet = kubelet.clone();
        async move {
            kubelet
                .request("PATCH", &path, &[("content-type", "application/merge-patch+json")], Bytes::from_static(br#"{"metadata":{"labels":{"touched":"yes"}}}"#))
                .await
        }
    };
    // Its own Node and its own pods' status: allowed.
    assert_eq!(patch("/api/v1/nodes/n1").await?.status, 200);
    assert_eq!(patch("/api/v1/nodes/n1/status").await?.status, 200);
    assert_eq!(patch("/api/v1/namespaces/default/pods/on-n1/status").await?.status, 200);
    // Another node's: refused, with the reason.
    let body = assert_status(&patch("/api/v1/nodes/n2").await?, 403, "Forbidden");
    assert!(body["message"].as_str().unwrap().contains(r#"node "n1" is not allowed to modify node "n2""#), "{body}");
    assert_status(&patch("/api/v1/nodes/n2/status").await?, 403, "Forbidden");
    let body = assert_status(&patch("/api/v1/namespaces/default/pods/on-n2/status").await?, 403, "Forbidden");
    assert!(body["message"].as_str().unwrap().contains("spec.nodeName set to itself"), "{body}");
    let reply = kubelet.request("DELETE", "/api/v1/namespaces/default/pods/on-n2", &[], Bytes::new()).await?;
    assert_status(&reply, 403, "Forbidden");
    assert_eq!(admin.get("/api/v1/namespaces/default/pods/on-n2").await?.status, 200);
    // Creating: a Node or a Lease of another name, and pods that are not its mirror pods.
    assert_status(&kubelet.post_json("/api/v1/nodes", &json!({"metadata": {"name": "n3"}})).await?, 403, "Forbidden");
    assert_status(
        &kubelet
            .post_json("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", &json!({"metadata": {"name": "n2"}}))
            .await?,
        403,
        "Forbidden",
    );
    assert_eq!(
        kubelet
            .post_json("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", &json!({"metadata": {"name": "n1"}}))
            .await?
            .status,
        201
    );
    let pod = |name: &str, node: &str, mirror: bool| {
        let mut p = json!({"metadata": {"name": name}, "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}});
        if mirror {
            p["metadata"]["annotations"] = json!({"kubernetes.io/config.mirror": "hash"});
        }
        p
    };
    let body = assert_status(&kubelet.post_json("/api/v1/namespaces/default/pods", &pod("sneaky", "n1", false)).await?, 403, "Forbidden");
    assert!(body["message"].as_str().unwrap().contains("can only create mirror pods"), "{body}");
    assert_status(&kubelet.post_json("/api/v1/namespaces/default/pods", &pod("m2", "n2", true)).await?, 403, "Forbidden");
    assert_eq!(kubelet.post_json("/api/v1/namespaces/default/pods", &pod("m1", "n1", true)).await?.status, 201);
    Ok(())
}
