//! The officers' web workspace on real node processes: sign-in with a personal account
//! (password and TOTP), sessions and CSRF tokens, scopes, lockout, packet text rendered inert,
//! and — in a real headless Chromium driven through chromedriver — a FLASH alert sent by
//! another node process appearing on the open inbox without a reload, opened, acknowledged
//! under the officer's name, and found again by a search on an entity's name.

use std::process::Stdio;
use std::time::Duration;

mod common;

use common::browser::{docs_dir, Browser};
use common::cluster::*;
use common::http::{form, input_value, request, sign_in, Answer};
use liaison::accounts::totp::{base32_decode, TotpSecret, STEP_SECONDS};
use serde_json::{json, Value};

/// An account made with `liaison users add` (through the node's admin API).
struct Officer {
    name: String,
    password: String,
    secret: TotpSecret,
}

impl Officer {
    /// The TOTP code `steps` steps after the current one (a step is accepted once per account,
    /// and the next one is accepted too: several sign-ins in one test use 0, then 1).
    fn code(&self, steps: u64) -> String {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        format!("{:06}", self.secret.code_at(now / STEP_SECONDS + steps))
    }
}

fn add_officer(n: &NodeProc, name: &str, display: &str, extra: &[&str]) -> Officer {
    let password = format!("{name}-passphrase-of-some-length");
    let mut args = vec!["users", "add", name, "--display-name", display, "--password-stdin", "--json"];
    args.extend_from_slice(extra);
    let mut child = std::process::Command::new(BIN)
        .args(&args)
        .env("LIAISON_API", &n.api)
        .env("LIAISON_TOKEN", &n.token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "users add: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["password"].is_null(), "a given password is not echoed");
    let secret = TotpSecret::from_bytes(&base32_decode(v["totp_secret"].as_str().unwrap()).unwrap());
    Officer { name: name.into(), password, secret }
}

/// The session cookie of a successful sign-in.
fn session(a: &Answer) -> String {
    assert_eq!(a.status, 303, "sign-in refused: {}", a.body);
    let (_, v) = a.cookies().into_iter().find(|(k, _)| k == "liaison_session").expect("a session cookie");
    format!("liaison_session={v}")
}

fn get(web: &str, path: &str, cookie: &str) -> Answer {
    request(web, "GET", path, &[("Cookie", cookie)], None)
}

fn post(web: &str, path: &str, cookie: &str, pairs: &[(&str, &str)]) -> Answer {
    request(
        web,
        "POST",
        path,
        &[("Cookie", cookie), ("Content-Type", "application/x-www-form-urlencoded")],
        Some(&form(pairs)),
    )
}

fn submit(n: &NodeProc, to: &str, packet: &Value) -> String {
    let (code, v) = n.api("POST", &format!("/v1/packets?to={to}"), Some(&packet.to_string()));
    assert_eq!(code, 201, "{v}");
    v["id"].as_str().unwrap().to_owned()
}

/// Waits until `id` is in the node's inbox listing (what officers see: listed once noted after
/// the store's commit, so a packet is there by the time its sender holds the receipt).
fn wait_received(n: &NodeProc, id: &str) {
    wait_for(&format!("{id} at {}", n.name), Duration::from_secs(30), || {
        n.api("GET", "/v1/inbox", None).1.as_array().is_some_and(|a| a.iter().any(|i| i["id"] == id))
    });
}

/// Account events of the audit trail, as "account action".
fn account_events(n: &NodeProc) -> Vec<String> {
    let (code, v) = n.api("GET", "/v1/audit/entries", None);
    assert_eq!(code, 200, "{v}");
    v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| {
            let a = &e["event"]["account"];
            a.is_object().then(|| format!("{} {}", a["account"].as_str().unwrap_or("-"), a["action"].as_str().unwrap()))
        })
        .collect()
}

#[test]
fn pages_need_a_session_changes_need_its_csrf_token_and_packet_text_stays_text() {
    let c = Cluster::new(&["IT-DCSA", "ES-UDYCO"]);
    let (it, es) = (c.get("IT-DCSA"), c.get("ES-UDYCO"));
    let web = &it.web;

    // Nothing without a session: pages send to the sign-in, streams and changes are refused.
    for path in ["/", "/inbox", "/inbox?q=x", "/packets/019ac0a1-5c00-7000-8000-000000000003?from=ES-UDYCO"] {
        let a = request(web, "GET", path, &[], None);
        assert!(a.status == 303 || a.status == 401, "{path}: {}", a.status);
        assert!(!a.body.contains("Inbox"), "{path}");
        if path != "/" {
            assert_eq!(a.header("location"), Some("/signin"), "{path}");
        }
    }
    assert_eq!(request(web, "GET", "/events", &[], None).status, 401);
    for path in ["/signout", "/packets/019ac0a1-5c00-7000-8000-000000000003/ack?from=ES-UDYCO"] {
        let a = request(web, "POST", path, &[("Content-Type", "application/x-www-form-urlencoded")], Some("csrf=x"));
        assert_eq!(a.status, 401, "{path}");
    }
    // A forged session cookie is no session; the API wants its token.
    assert_eq!(get(web, "/inbox", "liaison_session=00ff").header("location"), Some("/signin"));
    assert_eq!(liaison::client::call(&it.api, "wrong", "GET", "/v1/inbox", None).unwrap().0, 401);
    // Every answer carries the strict policy.
    let signin = request(web, "GET", "/signin", &[], None);
    let csp = signin.header("content-security-policy").unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'") && !csp.contains("unsafe"),
        "{csp}"
    );
    assert_eq!(signin.header("x-frame-options"), Some("DENY"));
    // Another Host (a page elsewhere reaching this address through DNS rebinding) is refused.
    let rebound = request(web, "GET", "/signin", &[("Host", "attacker.example")], None);
    assert_eq!(rebound.status, 421);
    assert_eq!(signin.header("cache-control"), Some("no-store"));

    let ana = add_officer(it, "ana.rossi", "Isp. Ana Rossi", &["--role", "officer"]);
    // A sign-in form posted from elsewhere (its token not the one in this browser's cookie).
    let a = request(
        web,
        "POST",
        "/signin",
        &[("Cookie", "liaison_signin=aaaa"), ("Content-Type", "application/x-www-form-urlencoded")],
        Some(&form(&[("csrf", "bbbb"), ("name", &ana.name), ("password", &ana.password), ("code", &ana.code(0))])),
    );
    assert_eq!(a.status, 403);
    assert!(a.cookies().iter().all(|(k, _)| k != "liaison_session"));
    let cookie = session(&sign_in(web, &ana.name, &ana.password, &ana.code(0)));
    let inbox = get(web, "/inbox", &cookie);
    assert_eq!(inbox.status, 200);
    assert!(inbox.body.contains("Isp. Ana Rossi"), "{}", inbox.body);

    // A packet whose text tries to run: shown as text, linked nowhere.
    let mut p = common::draft("information-request.json");
    p["envelope"]["purpose"] = json!("<script>alert('purpose')</script> see <a href=\"javascript:alert(1)\">here</a>");
    p["body"]["InformationRequest"]["subject"] = json!("<img src=x onerror=alert(2)> javascript:alert(3)");
    let id = submit(es, "IT-DCSA", &p);
    wait_received(it, &id);
    let inbox = get(web, "/inbox", &cookie);
    assert!(inbox.body.contains(&id), "{}", inbox.body);
    let view = get(web, &format!("/packets/{id}?from=ES-UDYCO"), &cookie);
    assert_eq!(view.status, 200, "{}", view.body);
    for page in [&inbox.body, &view.body] {
        assert_eq!(page.matches("<script").count(), 1, "only the workspace's own script:\n{page}");
        assert!(
            !page.contains("<img") && !page.contains("href=\"javascript:") && !page.contains("<a href=\"javascript")
        );
        assert!(page.contains("&lt;img src=x onerror=alert(2)&gt;"), "{page}");
    }
    assert!(
        view.body.contains("&lt;script&gt;alert(&#39;purpose&#39;)&lt;/script&gt;")
            || view.body.contains("&lt;script&gt;alert('purpose')&lt;/script&gt;"),
        "{}",
        view.body
    );

    // A change with a forged CSRF token is refused, and nothing is acknowledged.
    let ack = format!("/packets/{id}/ack?from=ES-UDYCO");
    let forged =
        post(web, &ack, &cookie, &[("csrf", "0000000000000000000000000000000000000000000000000000000000000000")]);
    assert_eq!(forged.status, 403);
    let missing = request(
        web,
        "POST",
        &ack,
        &[("Cookie", &cookie), ("Content-Type", "application/x-www-form-urlencoded")],
        Some(""),
    );
    assert!(missing.status >= 400, "{}", missing.status);
    assert!(it.inbox().iter().find(|i| i["id"] == id).unwrap()["read_by"].is_null());
    // With the session's token, but sent from another site: refused.
    let csrf = input_value(&view.body, "csrf").unwrap();
    let cross = request(
        web,
        "POST",
        &ack,
        &[
            ("Cookie", &cookie),
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Origin", "http://attacker.example"),
        ],
        Some(&form(&[("csrf", &csrf)])),
    );
    assert_eq!(cross.status, 403);
    // From this page: acknowledged as the signed-in officer, and the originator sees it.
    let done = post(web, &ack, &cookie, &[("csrf", &csrf)]);
    assert_eq!(done.status, 303, "{}", done.body);
    assert_eq!(it.inbox().iter().find(|i| i["id"] == id).unwrap()["read_by"], "ana.rossi");
    wait_for("the originator sees who read it", Duration::from_secs(20), || {
        es.api("GET", &format!("/v1/packets/{id}"), None).1["recipients"][0]["read_by"] == "ana.rossi"
    });
    // Sign-out ends the session.
    assert_eq!(post(web, "/signout", &cookie, &[("csrf", &csrf)]).status, 303);
    assert_eq!(get(web, "/inbox", &cookie).header("location"), Some("/signin"));
    let events = account_events(it);
    for e in ["ana.rossi added", "ana.rossi signed in", "ana.rossi viewed", "ana.rossi signed out"] {
        assert!(events.iter().any(|x| x == e), "{e} in {events:?}");
    }
}

#[test]
fn accounts_see_only_their_scope_and_a_locked_account_stays_locked() {
    let mut c = Cluster::new(&["IT-DCSA", "ES-UDYCO", "CO-DIJIN"]);
    let (it, es, co) = (c.get("IT-DCSA"), c.get("ES-UDYCO"), c.get("CO-DIJIN"));
    let web = it.web.clone();
    let es_desk = add_officer(it, "es.desk", "Spanish desk", &["--partners", "ES-UDYCO"]);
    let case_desk = add_officer(it, "case.desk", "Case 77 team", &["--cases", "ES-UDYCO/2026/77*"]);
    let mut from_es = common::draft("information-request.json");
    from_es["envelope"]["case_ref"] = json!("ES-UDYCO/2026/7701");
    let mut from_co = common::draft("information-request.json");
    from_co["envelope"]["case_ref"] = json!("CO-DIJIN/2026/5501");
    let mut es_other = common::draft("information-request.json");
    es_other["envelope"]["case_ref"] = json!("ES-UDYCO/2026/9900");
    let es_id = submit(es, "IT-DCSA", &from_es);
    let co_id = submit(co, "IT-DCSA", &from_co);
    let es_other_id = submit(es, "IT-DCSA", &es_other);
    for id in [&es_id, &co_id, &es_other_id] {
        wait_received(it, id);
    }
    let desk = session(&sign_in(&web, &es_desk.name, &es_desk.password, &es_desk.code(0)));
    let page = get(&web, "/inbox", &desk).body;
    assert!(page.contains(&es_id) && page.contains(&es_other_id) && !page.contains(&co_id), "{page}");
    assert!(!get(&web, "/inbox?q=CO-DIJIN%2F2026%2F5501", &desk).body.contains(&co_id));
    let direct = get(&web, &format!("/packets/{co_id}?from=CO-DIJIN"), &desk);
    assert_eq!(direct.status, 404);
    assert!(!direct.body.contains("CO-DIJIN/2026/5501"));
    let csrf = input_value(&page, "csrf").unwrap();
    assert_eq!(post(&web, &format!("/packets/{co_id}/ack?from=CO-DIJIN"), &desk, &[("csrf", &csrf)]).status, 404);
    // The deadlines board: the requests of the account's scope; a supervisor's, all of them.
    let board = get(&web, "/deadlines", &desk).body;
    let to_answer = board.split("id=\"to-answer\"").nth(1).unwrap().split("</section>").next().unwrap();
    assert!(to_answer.contains(&es_id) && to_answer.contains(&es_other_id) && !to_answer.contains(&co_id), "{board}");
    let chief = add_officer(it, "chief", "Comm. Bianchi", &["--role", "supervisor", "--partners", "ES-UDYCO"]);
    let chief = session(&sign_in(&web, &chief.name, &chief.password, &chief.code(0)));
    let board = get(&web, "/deadlines", &chief).body;
    assert!(
        board.contains(&es_id) && !board.contains(&co_id) && board.contains("Requested by"),
        "the role widens nothing: {board}"
    );
    let cases = session(&sign_in(&web, &case_desk.name, &case_desk.password, &case_desk.code(0)));
    let page = get(&web, "/inbox", &cases).body;
    assert!(page.contains(&es_id) && !page.contains(&es_other_id) && !page.contains(&co_id), "{page}");
    assert_eq!(get(&web, &format!("/packets/{es_other_id}?from=ES-UDYCO"), &cases).status, 404);
    // A reset (a lost phone) ends the account's open sessions.
    assert!(it.cli(&["users", "reset", "case.desk"]).status.success());
    assert_eq!(get(&web, "/inbox", &cases).header("location"), Some("/signin"));
    assert!(account_events(it).iter().any(|e| e == "es.desk refused"));

    // Five wrong passwords lock the account; then the right password and code say "locked".
    let ana = add_officer(it, "ana", "Ana", &[]);
    for _ in 0..liaison::accounts::MAX_FAILURES {
        let a = sign_in(&web, &ana.name, "not her passphrase at all", &ana.code(0));
        assert_eq!(a.status, 401);
        assert!(a.body.contains("not recognised"), "{}", a.body);
    }
    let a = sign_in(&web, &ana.name, &ana.password, &ana.code(0));
    assert_eq!(a.status, 401);
    assert!(a.body.contains("locked"), "{}", a.body);
    // A kill -9 and a start: still locked.
    let it = c.node("IT-DCSA");
    it.kill_9();
    it.start();
    let a = sign_in(&web, &ana.name, &ana.password, &ana.code(1));
    assert!(a.status == 401 && a.body.contains("locked"), "{} {}", a.status, a.body);
    let list = String::from_utf8_lossy(&it.cli(&["users", "list"]).stdout).into_owned();
    assert!(list.lines().any(|l| l.starts_with("ana ") && l.contains("locked")), "{list}");
    // An administrator resets it: new password and secret, unlocked.
    let o = it.cli(&["users", "reset", "ana", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let fresh = Officer {
        name: "ana".into(),
        password: v["password"].as_str().unwrap().into(),
        secret: TotpSecret::from_bytes(&base32_decode(v["totp_secret"].as_str().unwrap()).unwrap()),
    };
    let cookie = session(&sign_in(&web, &fresh.name, &fresh.password, &fresh.code(0)));
    assert_eq!(get(&web, "/inbox", &cookie).status, 200);
    // Disabling ends the open session at its next request.
    assert!(it.cli(&["users", "disable", "ana"]).status.success());
    assert_eq!(get(&web, "/inbox", &cookie).header("location"), Some("/signin"));
    let events = account_events(it);
    for e in ["ana locked", "ana reset", "ana disabled"] {
        assert!(events.iter().any(|x| x == e), "{e} in {events:?}");
    }
}

#[test]
fn in_a_browser_a_flash_alert_appears_live_is_acknowledged_and_found_by_a_name() {
    let c = Cluster::new(&["IT-DCSA", "CO-DIJIN", "ES-UDYCO"]);
    let (it, co, es) = (c.get("IT-DCSA"), c.get("CO-DIJIN"), c.get("ES-UDYCO"));
    let officer = add_officer(it, "g.rossi", "Isp. Giulia Rossi", &[]);
    // Something in the inbox already.
    let mut earlier = Vec::new();
    for (from, example) in [(es, "information-request.json"), (es, "jit-notice.json"), (co, "information-request.json")]
    {
        earlier.push(submit(from, "IT-DCSA", &common::draft(example)));
    }
    for id in &earlier {
        wait_received(it, id);
    }

    // The documentation's screenshots are made with LIAISON_SCREENSHOTS=1 (docs/); otherwise
    // they are made all the same, in a temporary directory.
    let tmp = tempfile::tempdir().unwrap();
    let shots = if std::env::var_os("LIAISON_SCREENSHOTS").is_some() { docs_dir() } else { tmp.path().to_owned() };
    let b = Browser::start();
    b.goto(&format!("{}/signin", it.web));
    b.type_into("#name", &officer.name);
    b.type_into("#password", &officer.password);
    b.type_into("#code", &officer.code(0));
    b.click("#signin");
    b.wait_true(
        "the inbox",
        "return window.location.pathname === '/inbox' && !!document.querySelector('table.inbox');",
        Duration::from_secs(10),
    );
    assert!(b.url().ends_with("/inbox"), "{}", b.url());
    assert!(b.text("header.top").contains("Isp. Giulia Rossi"));
    // The page stays open: a marker set now survives only if it is never reloaded.
    b.script("window.__stayed = true; return true;");
    b.wait_true("the live stream is open", "return document.body.dataset.stream === 'open';", Duration::from_secs(10));

    // CO-DIJIN's process sends a FLASH controlled-delivery alert.
    let alert = submit(co, "IT-DCSA", &common::draft("controlled-delivery-alert.json"));
    let row = format!("tr[data-id=\"{alert}\"]");
    b.find(&row, Duration::from_secs(30));
    assert_eq!(b.script("return window.__stayed === true;"), Value::Bool(true), "the page was reloaded");
    let bar = b.text("#alert-bar");
    assert!(bar.contains("FLASH") && bar.contains("ControlledDeliveryAlert") && bar.contains("CO-DIJIN"), "{bar}");
    assert!(b.text(&row).contains("CO-DIJIN/2026/CD-0117"));
    b.screenshot(&shots.join("inbox.png"));

    // Open it: the markings first, with what H2 means.
    b.click(&format!("{row} a.open"));
    b.wait_true(
        "the packet page",
        "return window.location.pathname.indexOf('/packets/') === 0 && !!document.getElementById('markings');",
        Duration::from_secs(10),
    );
    let banner = b.text("#markings");
    for m in ["EU_RESTRICTED", "TLP:RED", "H2", "not to be passed on without the provider's permission", "B2"] {
        assert!(banner.contains(m), "{m} in {banner}");
    }
    assert!(b.text("#body").contains("Ortega Ruiz"));
    b.screenshot(&shots.join("packet.png"));
    // Acknowledge: the originator sees the officer's name.
    b.click("#ack");
    b.wait_true(
        "acknowledged",
        "return document.querySelectorAll('#reads li').length > 0 && !document.getElementById('ack');",
        Duration::from_secs(10),
    );
    assert!(b.text("#reads").contains("g.rossi"));
    wait_for("CO-DIJIN sees who read it", Duration::from_secs(20), || {
        co.api("GET", &format!("/v1/packets/{alert}"), None).1["recipients"][0]["read_by"] == "g.rossi"
    });

    // Search by the courier's name finds it, and only it.
    b.goto(&format!("{}/inbox", it.web));
    b.type_into("#q", "ortega");
    b.click("#search");
    b.wait_true(
        "the search page",
        "return window.location.search.indexOf('q=ortega') >= 0 && document.readyState === 'complete';",
        Duration::from_secs(10),
    );
    b.find(&row, Duration::from_secs(10));
    assert!(b.text("#total").starts_with("1 packet"), "{}", b.text("#total"));

    // Answer CO-DIJIN's request with the form: the dry run shows what the policy with CO-DIJIN
    // removes before anything is sent.
    let request = &earlier[2];
    b.goto(&format!("{}/packets/{request}?from=CO-DIJIN", it.web));
    b.click("a.reply[href*='type=InformationResponse']");
    b.wait_true(
        "the compose page",
        "return window.location.pathname === '/compose' && !!document.getElementById('compose');",
        Duration::from_secs(10),
    );
    let r = "body.InformationResponse";
    b.type_into(
        &format!("[name='{r}.summary']"),
        "The number belongs to Javier Ortega Ruiz; his account is at Banco Levante.",
    );
    b.set_value("[name='envelope.legal_basis']", "Directive (EU) 2023/977 art. 5");
    b.set_value("[name='envelope.purpose']", "Answer to the request about the witness threat");
    b.set_value(&format!("[name='{r}.entities[0]#kind']"), "person");
    b.set_value(&format!("[name='{r}.entities[0]#grading']"), "A1");
    b.type_into(&format!("[name='{r}.entities[0].person.family_name']"), "Ortega Ruiz");
    b.set_value(&format!("[name='{r}.entities[0].person.date_of_birth']"), "1984-03-09");
    b.set_value(&format!("[name='{r}.entities[1]#kind']"), "account");
    b.set_value(&format!("[name='{r}.entities[1]#grading']"), "B2");
    b.set_value(&format!("[name='{r}.entities[1].account.scheme']"), "iban");
    b.type_into(&format!("[name='{r}.entities[1].account.identifier']"), "ES9121000418450200051332");
    b.wait_true(
        "the dry run lists the redactions",
        "var d = document.getElementById('dryrun').textContent; return d.indexOf('date_of_birth') >= 0 && d.indexOf('entities[1]') >= 0;",
        Duration::from_secs(20),
    );
    let dry = b.text("#dryrun");
    assert!(dry.contains("CO-DIJIN") && dry.contains("will be removed") && dry.contains("send.redact.person"), "{dry}");
    b.screenshot(&shots.join("compose.png"));
    b.click("#send");
    b.wait_true(
        "the sent page",
        "return window.location.pathname.indexOf('/sent/') === 0 && !!document.getElementById('recipients');",
        Duration::from_secs(20),
    );
    assert!(b.url().contains("/sent/"), "{}", b.url());
    let sent = b.text("#recipients");
    assert!(sent.contains("CO-DIJIN") && sent.contains("date_of_birth"), "{sent}");
    let answer = b.url().rsplit('/').next().unwrap().to_owned();
    wait_received(co, &answer);
    let (_, shown) = co.api("GET", &format!("/v1/inbox/{answer}"), None);
    let person = &shown["packet"]["body"]["InformationResponse"]["entities"][0]["person"];
    assert_eq!(person["family_name"], "Ortega Ruiz");
    assert!(person["date_of_birth"].is_null(), "removed before signing: {person}");
    assert_eq!(shown["packet"]["envelope"]["originator"]["officer"], "g.rossi");
    assert_eq!(shown["packet"]["envelope"]["in_reply_to"], request.as_str());
}

#[test]
fn api_clients_act_under_their_own_name_unless_they_name_officers() {
    let c = Cluster::new(&["IT-DCSA", "ES-UDYCO"]);
    let (it, es) = (c.get("IT-DCSA"), c.get("ES-UDYCO"));
    let terminal = |method: &str, path: &str, body: Option<&str>| {
        liaison::client::call(&it.api, TERMINAL_TOKEN, method, path, body).unwrap()
    };
    // Not an admin client: no accounts.
    assert_eq!(terminal("GET", "/v1/users", None).0, 403);
    let (code, _) = terminal(
        "POST",
        "/v1/users",
        Some(r#"{"name": "x", "display_name": "X", "role": "admin", "password": "long enough password"}"#),
    );
    assert_eq!(code, 403);
    // A draft naming another officer is refused; without a name it goes under the client's.
    let mut d = common::draft("information-request.json");
    let (code, v) = terminal("POST", "/v1/packets?to=ES-UDYCO", Some(&d.to_string()));
    assert_eq!(code, 403, "{v}");
    assert_eq!(v["field"], "envelope.originator.officer");
    d["envelope"]["originator"].as_object_mut().unwrap().remove("officer");
    let (code, v) = terminal("POST", "/v1/packets?to=ES-UDYCO", Some(&d.to_string()));
    assert_eq!(code, 201, "{v}");
    let sent = v["id"].as_str().unwrap().to_owned();
    wait_received(es, &sent);
    let (_, shown) = es.api("GET", &format!("/v1/inbox/{sent}"), None);
    assert_eq!(shown["packet"]["envelope"]["originator"]["officer"], "terminal-7");
    // An acknowledgement naming someone else is refused; without a name it is the client's.
    let id = submit(es, "IT-DCSA", &common::draft("information-request.json"));
    wait_received(it, &id);
    let (code, v) = terminal("POST", &format!("/v1/inbox/{id}/ack"), Some(r#"{"officer": "Isp. Rossi"}"#));
    assert_eq!(code, 403, "{v}");
    let (code, v) = terminal("POST", &format!("/v1/inbox/{id}/ack"), Some("{}"));
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["officer"], "terminal-7");
    wait_for("the originator sees the client's name", Duration::from_secs(20), || {
        es.api("GET", &format!("/v1/packets/{id}"), None).1["recipients"][0]["read_by"] == "terminal-7"
    });
    // The CLI, with this token: the same.
    let cli = |args: &[&str]| {
        std::process::Command::new(BIN)
            .args(args)
            .env("LIAISON_API", &it.api)
            .env("LIAISON_TOKEN", TERMINAL_TOKEN)
            .output()
            .unwrap()
    };
    let o = cli(&["ack", "--officer", "Someone Else", &id]);
    assert_ne!(o.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("acts under its own name"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // The inbox: the listing's columns, and no system packets.
    let o = cli(&["inbox"]);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(text.contains("IT-DCSA/2026/0042") && text.contains("BASIC_PROTECTION TLP:AMBER H0 H1 B2"), "{text}");
    assert!(!text.contains("ReadAck") && !text.contains("DeliveryReceipt"), "{text}");
    let o = cli(&["inbox", "--search", "1234-KLM", "--partner", "ES-UDYCO", "--json"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).matches("\"id\"").count(), 1);
    let o = cli(&["inbox", "--search", "no-such-plate-anywhere"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 1, "the header only");
    // show: the markings first, then readable text.
    let o = cli(&["show", &id]);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(text.starts_with("BASIC_PROTECTION TLP:AMBER H0 H1 B2\n"), "{text}");
    assert!(text.contains("H1  not to be used in judicial proceedings") && text.contains("+34612345678"), "{text}");
    assert!(!text.trim_start().starts_with('{'), "not JSON: {text}");
}

#[test]
fn the_sender_sees_what_each_recipients_policy_removed_and_who_read_it() {
    let c = Cluster::new(&["IT-DCSA", "ES-UDYCO", "CO-DIJIN"]);
    let (it, co, es) = (c.get("IT-DCSA"), c.get("CO-DIJIN"), c.get("ES-UDYCO"));
    // An answer to CO-DIJIN and ES-UDYCO: the policy with CO-DIJIN removes a person's biometrics
    // and date of birth and every account; ES-UDYCO gets it as written.
    let mut answer = common::draft("information-response.json");
    answer["body"]["InformationResponse"].as_object_mut().unwrap().remove("attachments");
    let id = submit(it, "CO-DIJIN,ES-UDYCO", &answer);
    wait_received(co, &id);
    wait_received(es, &id);
    assert_eq!(co.api("POST", &format!("/v1/inbox/{id}/ack"), Some(r#"{"officer": "My. Salcedo"}"#)).0, 200);
    wait_for("IT-DCSA hears CO-DIJIN read it, and ES-UDYCO's receipt", Duration::from_secs(20), || {
        it.api("GET", &format!("/v1/sent/{id}"), None).1["status"]["recipients"].as_array().is_some_and(|r| {
            r.iter().any(|x| x["node"] == "CO-DIJIN" && x["read_by"] == "My. Salcedo")
                && r.iter().any(|x| x["node"] == "ES-UDYCO" && x["state"] == "delivered")
        })
    });
    let officer = add_officer(it, "g.rossi", "Isp. Giulia Rossi", &[]);
    let cookie = session(&sign_in(&it.web, &officer.name, &officer.password, &officer.code(0)));
    let list = get(&it.web, "/sent", &cookie);
    assert!(list.body.contains(&id), "{}", list.body);
    let view = get(&it.web, &format!("/sent/{id}"), &cookie);
    assert_eq!(view.status, 200, "{}", view.body);
    let co_row = view.body.split("data-recipient=\"CO-DIJIN\"").nth(1).unwrap().split("</tr>").next().unwrap();
    for removed in [
        "date_of_birth",
        "biometrics",
        "sent with these removed",
        "delivered",
        "My. Salcedo",
        "signed by CO-DIJIN/sig/",
    ] {
        assert!(co_row.contains(removed), "{removed} in {co_row}");
    }
    let es_row = view.body.split("data-recipient=\"ES-UDYCO\"").nth(1).unwrap().split("</tr>").next().unwrap();
    assert!(es_row.contains("sent as written") && es_row.contains("delivered"), "{es_row}");
    // An account whose scope is ES-UDYCO sees ES-UDYCO's line only.
    let es_desk = add_officer(it, "es.desk", "Spanish desk", &["--partners", "ES-UDYCO"]);
    let desk = session(&sign_in(&it.web, &es_desk.name, &es_desk.password, &es_desk.code(0)));
    let view = get(&it.web, &format!("/sent/{id}"), &desk).body;
    assert!(view.contains("data-recipient=\"ES-UDYCO\"") && !view.contains("data-recipient=\"CO-DIJIN\""), "{view}");
    // A form with mistakes: every problem at its field, at once, nothing sent.
    let page = get(&it.web, "/compose?type=InformationRequest", &cookie);
    assert_eq!(page.status, 200);
    let csrf = input_value(&page.body, "csrf").unwrap();
    let bad = post(
        &it.web,
        "/compose",
        &cookie,
        &[
            ("csrf", &csrf),
            ("type", "InformationRequest"),
            ("action", "send"),
            ("to", "CO-DIJIN"),
            ("envelope.priority", "URGENT"),
            ("envelope.classification", "BASIC_PROTECTION"),
            ("envelope.language", "en"),
            ("envelope.handling.codes", "H0"),
            ("envelope.expires", "next week"),
            ("body.InformationRequest.data_access", "direct"),
        ],
    );
    assert_eq!(bad.status, 422, "{}", bad.body);
    for field in [
        "envelope.case_ref",
        "envelope.expires",
        "body.InformationRequest.subject",
        "body.InformationRequest.questions",
        "body.InformationRequest.reasons",
    ] {
        let at = bad.body.find(&format!("name=\"{field}\"")).unwrap_or_else(|| panic!("{field} in the form"));
        let rest = &bad.body[at..];
        let problem = rest.find("class=\"problem\"").unwrap_or(usize::MAX);
        let next = rest[1..].find("class=\"field").unwrap_or(usize::MAX);
        assert!(problem < next, "a problem shown at {field}");
    }
    assert_eq!(it.api("GET", "/v1/sent", None).1["total"], 1, "nothing sent");
    // The dry run names the rule that refuses a recipient.
    let mut form = vec![
        ("csrf", csrf.as_str()),
        ("type", "Refusal"),
        ("to", "CO-DIJIN"),
        ("to", "ES-UDYCO"),
        ("envelope.case_ref", "IT-DCSA/2026/0042"),
        ("envelope.priority", "ROUTINE"),
        ("envelope.classification", "EU_CONFIDENTIAL"),
        ("envelope.language", "en"),
        ("envelope.handling.codes", "H0"),
        ("envelope.in_reply_to", id.as_str()),
        ("body.Refusal.ground", "not_available"),
        ("body.Refusal.explanation", "We hold nothing on this number."),
    ];
    let check = post(&it.web, "/compose/check", &cookie, &form);
    assert_eq!(check.status, 200);
    let co_line = check.body.split("data-recipient=\"CO-DIJIN\"").nth(1).unwrap().split("</li>").next().unwrap();
    assert!(co_line.contains("REFUSED") && co_line.contains("send.max_classification"), "{}", check.body);
    // A recipient outside the account's scope cannot be written to.
    let desk_page = get(&it.web, "/compose?type=Refusal", &desk);
    let desk_csrf = input_value(&desk_page.body, "csrf").unwrap();
    form[0] = ("csrf", desk_csrf.as_str());
    form.push(("action", "send"));
    let refused = post(&it.web, "/compose", &desk, &form);
    assert_eq!(refused.status, 422);
    assert!(refused.body.contains("CO-DIJIN is not a partner you may write to"), "{}", refused.body);
    // Nor in a case outside its case scope; and a reply to a packet it cannot see is refused.
    let case_desk = add_officer(it, "case.desk", "Case 77", &["--cases", "IT-DCSA/2026/77*"]);
    let cases = session(&sign_in(&it.web, &case_desk.name, &case_desk.password, &case_desk.code(0)));
    let cases_csrf = input_value(&get(&it.web, "/compose?type=Refusal", &cases).body, "csrf").unwrap();
    form[0] = ("csrf", cases_csrf.as_str());
    form.retain(|(k, v)| !(*k == "to" && *v == "CO-DIJIN"));
    let refused = post(&it.web, "/compose", &cases, &form);
    assert_eq!(refused.status, 422);
    assert!(
        refused.body.contains("a case outside your account") || refused.body.contains("not a packet you can see"),
        "{}",
        refused.body
    );
    assert!(account_events(it).iter().any(|e| e == "case.desk refused"));
    // Fields a form does not have are ignored: nobody writes as another officer or to another
    // recipient by adding them.
    let ok_csrf = input_value(&get(&it.web, "/compose?type=InformationRequest", &cookie).body, "csrf").unwrap();
    let crafted = post(
        &it.web,
        "/compose",
        &cookie,
        &[
            ("csrf", &ok_csrf),
            ("type", "InformationRequest"),
            ("action", "send"),
            ("to", "ES-UDYCO"),
            ("envelope.recipients[1]", "CO-DIJIN"),
            ("envelope.originator.officer", "Someone Else"),
            ("envelope.originator.node", "ES-UDYCO"),
            ("envelope.case_ref", "IT-DCSA/2026/0099"),
            ("envelope.priority", "ROUTINE"),
            ("envelope.classification", "BASIC_PROTECTION"),
            ("envelope.language", "en"),
            ("envelope.handling.codes", "H0"),
            ("envelope.legal_basis", "Directive (EU) 2023/977 art. 4"),
            ("envelope.purpose", "A check of the form"),
            ("body.InformationRequest.subject", "Registered keeper of a van"),
            ("body.InformationRequest.questions", "Who keeps van 4455-XYZ?"),
            ("body.InformationRequest.reasons", "Seen at three handovers."),
            ("body.InformationRequest.data_access", "direct"),
        ],
    );
    assert_eq!(crafted.status, 303, "{}", crafted.body);
    let sent_id = crafted.header("location").unwrap().trim_start_matches("/sent/").to_owned();
    let (_, v) = it.api("GET", &format!("/v1/sent/{sent_id}"), None);
    assert_eq!(v["record"]["officer"], "g.rossi");
    assert_eq!(v["record"]["decisions"].as_array().unwrap().len(), 1, "ES-UDYCO only: {v}");
    assert!(account_events(it).iter().any(|e| e == "g.rossi sent"));

    // The CLI shows it too (it is not in this node's inbox).
    let text = String::from_utf8_lossy(&it.cli(&["show", &id]).stdout).into_owned();
    assert!(text.contains("SENT") && text.contains("CO-DIJIN") && text.contains("date_of_birth"), "{text}");
    assert!(text.contains("read by My. Salcedo"), "{text}");
}

#[test]
fn officers_pass_an_h2_alert_on_once_a_supervisor_at_its_originator_consents() {
    let c = Cluster::new(&["IT-DCSA", "ES-UDYCO", "CO-DIJIN"]);
    let (it, es, co) = (c.get("IT-DCSA"), c.get("ES-UDYCO"), c.get("CO-DIJIN"));
    let alert = submit(co, "ES-UDYCO", &common::draft("controlled-delivery-alert.json"));
    wait_received(es, &alert);
    let gomez = add_officer(es, "p.gomez", "Subinspector Gómez", &[]);
    let es_cookie = session(&sign_in(&es.web, &gomez.name, &gomez.password, &gomez.code(0)));
    let view = get(&es.web, &format!("/packets/{alert}?from=CO-DIJIN"), &es_cookie);
    let csrf = input_value(&view.body, "csrf").unwrap();
    let pass = format!("/packets/{alert}/forward?from=CO-DIJIN");
    // H2: the originator's consent first.
    let refused = post(&es.web, &pass, &es_cookie, &[("csrf", &csrf), ("to", "IT-DCSA")]);
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.body.contains("onward.consent_required"), "{}", refused.body);
    // An officer at CO-DIJIN may not consent; a supervisor may.
    let officer = add_officer(co, "a.salcedo", "My. Andrea Salcedo", &[]);
    let chief = add_officer(co, "c.ruiz", "Cnel. Ruiz", &["--role", "supervisor"]);
    let consent = format!("/sent/{alert}/consent");
    let form = |csrf: &str| vec![("csrf", csrf.to_owned()), ("holder", "ES-UDYCO".into()), ("allow", "IT-DCSA".into())];
    let as_pairs = |v: &Vec<(&'static str, String)>| v.iter().map(|(k, x)| (*k, x.clone())).collect::<Vec<_>>();
    let off = session(&sign_in(&co.web, &officer.name, &officer.password, &officer.code(0)));
    let off_csrf = input_value(&get(&co.web, &format!("/sent/{alert}"), &off).body, "csrf").unwrap();
    let pairs = as_pairs(&form(&off_csrf));
    let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(post(&co.web, &consent, &off, &refs).status, 403);
    let sup = session(&sign_in(&co.web, &chief.name, &chief.password, &chief.code(0)));
    let page = get(&co.web, &format!("/sent/{alert}"), &sup).body;
    assert!(page.contains("id=\"consent\""), "{page}");
    let sup_csrf = input_value(&page, "csrf").unwrap();
    let pairs = as_pairs(&form(&sup_csrf));
    let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let done = post(&co.web, &consent, &sup, &refs);
    assert_eq!(done.status, 303, "{}", done.body);
    wait_for("the consent at ES-UDYCO", Duration::from_secs(30), || {
        es.inbox().iter().any(|i| i["type"] == "OnwardConsent")
    });
    // The consent is a state of the alert at ES-UDYCO, not an inbox item.
    let view = get(&es.web, &format!("/packets/{alert}?from=CO-DIJIN"), &es_cookie).body;
    assert!(view.contains("id=\"consents\"") && view.contains("May be passed on to IT-DCSA"), "{view}");
    let listed = get(&es.web, "/inbox", &es_cookie).body;
    assert!(!listed.contains("OnwardConsent"), "{listed}");
    // Now it goes, as the officer who passed it on.
    let passed = post(&es.web, &pass, &es_cookie, &[("csrf", &csrf), ("to", "IT-DCSA")]);
    assert_eq!(passed.status, 303, "{}", passed.body);
    let forward = passed.header("location").unwrap().trim_start_matches("/sent/").to_owned();
    wait_received(it, &forward);
    let (_, shown) = it.api("GET", &format!("/v1/inbox/{forward}"), None);
    assert_eq!(shown["packet"]["envelope"]["id"], alert.as_str(), "the original, as CO-DIJIN signed it");
    let (_, sent) = es.api("GET", &format!("/v1/sent/{forward}"), None);
    assert_eq!(sent["record"]["officer"], "p.gomez");
    assert!(account_events(co).iter().any(|e| e == "a.salcedo refused"));
}

/// A TLS client for the workspace: trusting `ca`, presenting `card` (certificate, key PEM) if any.
fn tls_client(ca: &str, card: Option<(&str, &str)>) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap()).unwrap();
    let builder =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
    let config = match card {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    std::sync::Arc::new(config)
}

#[test]
fn over_its_own_tls_the_workspace_signs_an_officer_in_with_a_smart_card() {
    let dir = tempfile::tempdir().unwrap();
    let now = time::OffsetDateTime::now_utc();
    let (from, until) = (now - time::Duration::days(1), now + time::Duration::days(30));
    let web_ca = liaison::pki::Ca::generate("workspace CA", from, until).unwrap();
    let server = web_ca.issue_for_names("localhost", &["localhost".into()], from, until).unwrap();
    let officers = liaison::pki::Ca::generate("officers' card CA", from, until).unwrap();
    let card = officers.issue_for_names("Isp. Giulia Rossi", &[], from, until).unwrap();
    let stranger = officers.issue_for_names("Someone without an account", &[], from, until).unwrap();
    let rogue = liaison::pki::Ca::generate("another CA", from, until).unwrap();
    let forged = rogue.issue_for_names("Isp. Giulia Rossi", &[], from, until).unwrap();
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        p.to_string_lossy().into_owned()
    };
    let (cert, key, cards) = (
        file("web.crt", &server.cert_pem),
        file("web.key", &server.key_pem),
        file("officers.crt", officers.cert_pem()),
    );
    let card_file = file("rossi.crt", &card.cert_pem);
    let setup = Setup {
        config: Some(Box::new(move |_: &str, text: String| {
            text.replace(
                "[web]\n",
                &format!("[web]\ntls_cert = \"{cert}\"\ntls_key = \"{key}\"\nclient_ca = \"{cards}\"\n"),
            )
        })),
        ..Setup::default()
    };
    let c = Cluster::with(&["IT-DCSA", "ES-UDYCO"], setup);
    let it = c.get("IT-DCSA");
    assert!(it.log_text().contains("\"web\":\"https://"), "the ready line says https");
    let officer = add_officer(it, "g.rossi", "Isp. Giulia Rossi", &["--certificate", &card_file]);
    let host = it.web.trim_start_matches("http://").to_owned();
    let get_tls = |client: &std::sync::Arc<rustls::ClientConfig>, path: &str, cookie: &str| {
        common::http::request_tls(&host, client.clone(), "localhost", "GET", path, &[("Cookie", cookie)], None)
    };
    let post_tls = |client: &std::sync::Arc<rustls::ClientConfig>, path: &str, cookie: &str, pairs: &[(&str, &str)]| {
        common::http::request_tls(
            &host,
            client.clone(),
            "localhost",
            "POST",
            path,
            &[("Cookie", cookie), ("Content-Type", "application/x-www-form-urlencoded")],
            Some(&form(pairs)),
        )
    };
    let with_card = tls_client(web_ca.cert_pem(), Some((&card.cert_pem, &card.key_pem)));
    let without = tls_client(web_ca.cert_pem(), None);

    // With the card: offered, and it signs in; the cookie is Secure and __Host-.
    let page = get_tls(&with_card, "/signin", "").unwrap();
    assert!(page.body.contains("Sign in with your card") && page.body.contains("Isp. Giulia Rossi"), "{}", page.body);
    let (name, pre) = page.cookies().into_iter().find(|(k, _)| k.ends_with("liaison_signin")).unwrap();
    assert_eq!(name, "__Host-liaison_signin");
    let csrf = input_value(&page.body, "csrf").unwrap();
    let signed = post_tls(&with_card, "/signin/certificate", &format!("{name}={pre}"), &[("csrf", &csrf)]).unwrap();
    assert_eq!(signed.status, 303, "{}", signed.body);
    let set = signed
        .headers
        .iter()
        .find(|(k, v)| k.eq_ignore_ascii_case("set-cookie") && v.starts_with("__Host-liaison_session="))
        .unwrap();
    assert!(set.1.contains("Secure") && set.1.contains("HttpOnly") && set.1.contains("SameSite=Strict"), "{}", set.1);
    let session = set.1.split(';').next().unwrap().to_owned();
    let inbox = get_tls(&with_card, "/inbox", &session).unwrap();
    assert_eq!(inbox.status, 200);
    assert!(inbox.body.contains("Isp. Giulia Rossi"));

    // Without a card: no card offered; password and code still work.
    let page = get_tls(&without, "/signin", "").unwrap();
    assert!(!page.body.contains("Sign in with your card"));
    let (name, pre) = page.cookies().into_iter().find(|(k, _)| k.ends_with("liaison_signin")).unwrap();
    let csrf = input_value(&page.body, "csrf").unwrap();
    let pairs =
        [("csrf", csrf.as_str()), ("name", "g.rossi"), ("password", &officer.password), ("code", &officer.code(0))];
    assert_eq!(post_tls(&without, "/signin", &format!("{name}={pre}"), &pairs).unwrap().status, 303);
    // A card of the officers' CA that no account holds: refused.
    let other = tls_client(web_ca.cert_pem(), Some((&stranger.cert_pem, &stranger.key_pem)));
    let page = get_tls(&other, "/signin", "").unwrap();
    let (name, pre) = page.cookies().into_iter().find(|(k, _)| k.ends_with("liaison_signin")).unwrap();
    let csrf = input_value(&page.body, "csrf").unwrap();
    let refused = post_tls(&other, "/signin/certificate", &format!("{name}={pre}"), &[("csrf", &csrf)]).unwrap();
    assert_eq!(refused.status, 401);
    // A card from another CA: the handshake fails.
    let rogue_client = tls_client(web_ca.cert_pem(), Some((&forged.cert_pem, &forged.key_pem)));
    let refused = get_tls(&rogue_client, "/signin", "").unwrap_err();
    assert!(refused.contains("alert"), "a certificate from another CA is refused in the handshake: {refused}");
    // Without a card, the card sign-in is refused; a disabled account's card too; a card held
    // by one account cannot be given to another; removing it ends the sessions it opened.
    let page = get_tls(&without, "/signin", "").unwrap();
    let (name, pre) = page.cookies().into_iter().find(|(k, _)| k.ends_with("liaison_signin")).unwrap();
    let csrf = input_value(&page.body, "csrf").unwrap();
    assert_eq!(
        post_tls(&without, "/signin/certificate", &format!("{name}={pre}"), &[("csrf", &csrf)]).unwrap().status,
        401
    );
    let o = it.cli(&["users", "add", "other", "--display-name", "Other", "--certificate", &card_file]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("belongs to another account"));
    let card_signin = || {
        let page = get_tls(&with_card, "/signin", "").unwrap();
        let (name, pre) = page.cookies().into_iter().find(|(k, _)| k.ends_with("liaison_signin")).unwrap();
        let csrf = input_value(&page.body, "csrf").unwrap();
        post_tls(&with_card, "/signin/certificate", &format!("{name}={pre}"), &[("csrf", &csrf)]).unwrap()
    };
    assert!(it.cli(&["users", "disable", "g.rossi"]).status.success());
    assert_eq!(card_signin().status, 401);
    assert!(it.cli(&["users", "enable", "g.rossi"]).status.success());
    let again = card_signin();
    assert_eq!(again.status, 303);
    let session = again
        .cookies()
        .into_iter()
        .find(|(k, _)| k.ends_with("liaison_session"))
        .map(|(k, v)| format!("{k}={v}"))
        .unwrap();
    assert_eq!(get_tls(&with_card, "/inbox", &session).unwrap().status, 200);
    assert!(it.cli(&["users", "certificate", "g.rossi", &card_file, "--remove"]).status.success());
    assert_eq!(get_tls(&with_card, "/inbox", &session).unwrap().header("location"), Some("/signin"));
    assert_eq!(card_signin().status, 401);
    // Plain HTTP on that port: no answer the browser could use.
    let plain = std::net::TcpStream::connect(&host).map(|mut s| {
        use std::io::{Read, Write};
        let _ = s.write_all(b"GET /signin HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut buf = [0u8; 64];
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    });
    assert!(!plain.unwrap_or_default().starts_with("HTTP/1.1 200"));
    let events = account_events(it);
    assert!(events.iter().filter(|e| *e == "g.rossi signed in").count() >= 2, "{events:?}");
    // The node stops in order with a TLS connection open and idle.
    let mut idle = std::net::TcpStream::connect(&host).unwrap();
    let mut conn =
        rustls::ClientConnection::new(without.clone(), rustls::pki_types::ServerName::try_from("localhost").unwrap())
            .unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut idle).unwrap();
    }
    let mut c = c;
    let it = c.node("IT-DCSA");
    let started = std::time::Instant::now();
    it.terminate();
    assert!(it.log_text().contains("node stopped"));
    assert!(started.elapsed() < Duration::from_secs(20), "stopped in {:?}", started.elapsed());
    drop(conn);
}
