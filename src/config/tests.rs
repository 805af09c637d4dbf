use super::*;

fn write(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("node.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn no_env() -> config::Environment {
    config::Environment::with_prefix("LIAISON_TEST_NONE").prefix_separator("__").separator("__")
}

/// A path that points at the wrong file names the file and the line, and echoes nothing of
/// it: not the line (the TOML parser's excerpt), not a value.
#[test]
fn a_wrong_file_is_named_without_its_content() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "root:$6$SECRET-HASH-4f9a:19700:0:99999:7:::";
    let f = write(dir.path(), &format!("{secret}\ndaemon:*:19700:0:99999:7:::\n"));
    let err = Settings::load_with_env(&f, no_env()).unwrap_err().to_string();
    assert!(err.contains("node.toml") && err.contains("line 1, column"), "{err}");
    assert!(!err.contains("SECRET") && !err.contains("root"), "{err}");

    // Valid TOML of the wrong shape: serde's message would quote the value.
    let f = write(dir.path(), "[node]\nid = \"hunter2-SECRET\"\nlisten = 5\n");
    let err = Settings::load_with_env(&f, no_env()).unwrap_err().to_string();
    assert!(!err.contains("SECRET"), "{err}");

    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, format!("# a comment\n{secret}\n")).unwrap();
    let err = crate::policy::Policy::load(&policy, None).unwrap_err().to_string();
    assert!(err.contains("policy.toml") && err.contains("line 2, column"), "{err}");
    assert!(!err.contains("SECRET"), "{err}");
    for text in [
        "partner = 5\nsecret = \"SECRET-VALUE\"\n",
        "partner = \"SECRET-VALUE\"\nretention_days = \"SECRET-VALUE\"\n",
        "partner = \"IT-DCSA\"\nretention_days = 12345678901234\n",
    ] {
        std::fs::write(&policy, text).unwrap();
        let err = crate::policy::Policy::load(&policy, None).unwrap_err().to_string();
        assert!(!err.contains("SECRET-VALUE") && !err.contains("12345678901234"), "{err}");
        assert!(err.contains("line"), "{err}");
    }
    assert_eq!(
        quoted_values_hidden("unknown variant `SECRET`, expected one of `A`, `B`"),
        "unknown variant `…`, expected one of `A`, `B`"
    );
}

#[test]
fn the_demo_configs_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for n in ["IT-DCSA", "ES-UDYCO", "CO-DIJIN"] {
        let s = Settings::load_with_env(&root.join(format!("configs/{n}.toml")), no_env()).unwrap();
        assert_eq!(s.node.as_str(), n);
        assert_eq!(s.partners.len(), 2);
        assert!(s.api_listen.ip().is_loopback());
        assert_eq!(s.transport.congestion, crate::transport::Congestion::Bbr);
        assert_eq!(s.transport.key_exchange, crate::transport::KeyExchange::PostQuantum);
    }
    // The fallback, from the environment as an admin would set it; a bad value is refused.
    let it = root.join("configs/IT-DCSA.toml");
    let env = |v: &str| {
        config::Environment::with_prefix("LIAISON")
            .prefix_separator("__")
            .separator("__")
            .source(Some([("LIAISON__TRANSPORT__CONGESTION".to_owned(), v.to_owned())].into()))
    };
    assert_eq!(
        Settings::load_with_env(&it, env("cubic")).unwrap().transport.congestion,
        crate::transport::Congestion::Cubic
    );
    let err = Settings::load_with_env(&it, env("reno")).unwrap_err().to_string();
    assert!(err.contains("congestion") || err.contains("variant"), "{err}");
}

#[test]
fn partners_enrolled_through_the_api_are_read_beside_the_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let fr: NodeId = "FR-OFAST".parse().unwrap();
    let keys = crate::keys::NodeKeys::generate(fr, &mut rand_core::OsRng);
    let files = crate::enrolment::Files::new(
        dir.path(),
        &fr,
        "127.0.0.1:7404".parse().unwrap(),
        &keys.public().to_toml(),
        None,
        "test",
    );
    files.write().unwrap();
    let env = || {
        config::Environment::with_prefix("LIAISON")
            .prefix_separator("__")
            .separator("__")
            .source(Some([("LIAISON__NODE__PARTNERS_DIR".to_owned(), dir.path().display().to_string())].into()))
    };
    let it = root.join("configs/IT-DCSA.toml");
    let s = Settings::load_with_env(&it, env()).unwrap();
    let ids: Vec<&str> = s.partners.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["ES-UDYCO", "CO-DIJIN", "FR-OFAST"]);
    assert_eq!(s.partners[2].enrolled.as_deref(), Some(files.partner.0.as_path()));
    assert!(s.keyring.contains(&dir.path().to_owned()), "its keys are in the keyring");
    // The same partner in both places: refused, naming the file.
    std::fs::write(dir.path().join("ES-UDYCO.partner.toml"), "id = \"ES-UDYCO\"\naddr = \"127.0.0.1:1\"\n").unwrap();
    let err = Settings::load_with_env(&it, env()).unwrap_err().to_string();
    assert!(err.contains("ES-UDYCO.partner.toml") && err.contains("keep one of the two"), "{err}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        r#"
        [node]
        id = "italy"
        listen = "nowhere"
        data_dir = "data"
        [keys]
        dir = "missing-keys"
        keyring = []
        [tls]
        ca = "ca.crt"
        cert = "c.crt"
        key = "c.key"
        [api]
        listen = "0.0.0.0:8080"
        clients = [{ name = "x", token_sha256 = "abc" }]
        [[partners]]
        id = "ES-UDYCO"
        addr = "127.0.0.1:1"
        [[partners]]
        id = "ES-UDYCO"
        addr = "127.0.0.1:2"
        [log]
        format = "xml"
        "#,
    );
    let err = Settings::load_with_env(&f, no_env()).unwrap_err();
    let text = err.to_string();
    for want in [
        "node.id",
        "node.listen",
        "api.listen",
        "loopback",
        "keys.dir",
        "tls.ca",
        "keys.keyring",
        "token_sha256",
        "listed twice",
        "log.format",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert!(err.problems.len() >= 10, "{text}");
    // Each with the line of its key.
    for want in ["line 3: node.id", "line 4: node.listen", "line 14: api.listen", "line 23: log.format"] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

#[test]
fn three_typos_are_three_problems_in_one_run() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root.join("configs/IT-DCSA.toml")).unwrap();
    let text = text
        .replace("\nlisten = \"127.0.0.1:7401\"", "\nlisen = \"127.0.0.1:7401\"")
        .replace("receipt_timeout_ms = 15000", "receipt_timeout_ms = \"soon\"")
        .replace("headroom_mib = 256", "headroom_mb = 256");
    let f = dir.path().join("IT-DCSA.toml");
    std::fs::write(&f, &text).unwrap();
    let err = Settings::load_with_env(&f, no_env()).unwrap_err();
    let line = |needle: &str| text.lines().position(|l| l.starts_with(needle)).unwrap() + 1;
    assert_eq!(err.problems.len(), 3, "{err}");
    assert!(
        err.problems[0].starts_with(&format!("line {}", line("lisen"))) && err.problems[0].contains("lisen"),
        "{err}"
    );
    assert!(err.problems[1].starts_with(&format!("line {}", line("receipt_timeout_ms"))), "{err}");
    assert!(
        err.problems[2].starts_with(&format!("line {}", line("headroom_mb")))
            && err.problems[2].contains("headroom_mb"),
        "{err}"
    );
    // A policy file likewise.
    let policy = std::fs::read_to_string(root.join("configs/policies/IT-DCSA/ES-UDYCO.toml")).unwrap();
    let bad =
        policy.replacen("max_tlp = \"RED\"", "max_tlp = \"PURPLE\"", 1).replacen("attachments = ", "attachmets = ", 1);
    let problems = Policy::from_toml(&bad, None).unwrap_err();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems.iter().all(|p| p.starts_with("line ")), "{problems:?}");
}

#[test]
fn unknown_keys_and_missing_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = Settings::load_with_env(&dir.path().join("absent.toml"), no_env()).unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    let f =
        write(dir.path(), "[node]\nid = \"IT-DCSA\"\nlisten = \"127.0.0.1:1\"\ndata_dir = \"d\"\ncolour = \"red\"\n");
    let err = Settings::load_with_env(&f, no_env()).unwrap_err();
    assert!(err.to_string().contains("colour"), "{err}");
}

#[test]
fn list_keys_come_from_the_environment_comma_separated() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let file = root.join("configs/IT-DCSA.toml");
    let fed = root.join("certs-example/federation");
    let lists = env_lists(|name| {
        (name == "LIAISON__KEYS__KEYRING").then(|| {
            format!("{}, {}", fed.join("ES-UDYCO.pub.toml").display(), fed.join("CO-DIJIN.pub.toml").display())
        })
    });
    assert_eq!(lists.len(), 1);
    assert!(env_lists(|_| Some(" , ".to_owned())).is_empty(), "an empty variable is no setting");
    let s = Settings::load_with(&file, no_env(), lists).unwrap();
    assert_eq!(s.keyring, vec![fed.join("ES-UDYCO.pub.toml"), fed.join("CO-DIJIN.pub.toml")]);
    // A file that is not there is named, as from the file.
    let lists = env_lists(|name| (name == "LIAISON__TLS__CRLS").then(|| "/nonexistent/crl.pem".to_owned()));
    let err = Settings::load_with(&file, no_env(), lists).unwrap_err().to_string();
    assert!(err.contains("tls.crls") && err.contains("/nonexistent/crl.pem"), "{err}");
}

#[test]
fn environment_overrides_the_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let env = config::Environment::with_prefix("LIAISON")
        .prefix_separator("__")
        .separator("__")
        .source(Some([("LIAISON__NODE__LISTEN".to_owned(), "127.0.0.1:9999".to_owned())].into()));
    let s = Settings::load_with_env(&root.join("configs/IT-DCSA.toml"), env).unwrap();
    assert_eq!(s.listen.port(), 9999);
}

/// The workspace: loopback over plain HTTP; another address only over its own TLS; smart cards
/// only over TLS.
#[test]
fn the_web_workspace_needs_tls_beyond_loopback() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let it = root.join("configs/IT-DCSA.toml");
    let with = |pairs: &[(&str, &str)]| {
        let source: std::collections::HashMap<String, String> =
            pairs.iter().map(|(k, v)| (format!("LIAISON__WEB__{k}"), (*v).to_owned())).collect();
        let env =
            config::Environment::with_prefix("LIAISON").prefix_separator("__").separator("__").source(Some(source));
        Settings::load_with_env(&it, env)
    };
    let plain = with(&[]).unwrap().web.unwrap();
    assert!(plain.listen.ip().is_loopback() && plain.tls.is_none() && !plain.secure_cookies);
    let err = with(&[("LISTEN", "0.0.0.0:7491")]).unwrap_err().to_string();
    assert!(err.contains("needs TLS"), "{err}");
    let err = with(&[("CLIENT_CA", "certs-example/tls/ca.crt")]).unwrap_err().to_string();
    assert!(err.contains("smart-card sign-in needs the workspace over TLS"), "{err}");
    let tls = with(&[
        ("LISTEN", "0.0.0.0:7491"),
        ("TLS_CERT", "../certs-example/tls/IT-DCSA.crt"),
        ("TLS_KEY", "../certs-example/tls/IT-DCSA.key"),
    ])
    .unwrap()
    .web
    .unwrap();
    assert!(tls.tls.is_some() && tls.secure_cookies, "Secure cookies over TLS");
    let err = with(&[("TLS_CERT", "../certs-example/tls/IT-DCSA.crt")]).unwrap_err().to_string();
    assert!(err.contains("both, or neither"), "{err}");
}
