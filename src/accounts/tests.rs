use std::sync::Arc;

use super::*;
use crate::store::MemoryBackend;

const NOW: u64 = 1_900_000_000;
const PASSWORD: &str = "a long enough passphrase";

fn node() -> NodeId {
    "ES-UDYCO".parse().unwrap()
}

fn officer(name: &str) -> OfficerId {
    name.parse().unwrap()
}

fn new_account(name: &str) -> NewAccount {
    NewAccount {
        name: officer(name),
        display_name: "Ana García".into(),
        role: Role::Officer,
        partners: vec!["IT-DCSA".parse().unwrap()],
        cases: vec!["ES-2026-*".into()],
        password: Some(PASSWORD.into()),
        certificates: Vec::new(),
    }
}

fn code(c: &Credentials, unix: u64) -> String {
    let s = TotpSecret::from_bytes(&totp::base32_decode(&c.totp_secret).unwrap());
    format!("{:06}", s.code_at(unix / totp::STEP_SECONDS))
}

async fn accounts() -> (Arc<MemoryBackend>, Accounts) {
    let mem = Arc::new(MemoryBackend::default());
    let store = Store::with_backend(mem.clone()).unwrap();
    (mem, Accounts::load(store, &node()).unwrap())
}

#[tokio::test]
async fn sign_in_needs_the_password_and_a_fresh_code() {
    let (_, a) = accounts().await;
    let c = a.add(new_account("ana"), "admin", NOW * 1000).await.unwrap();
    assert!(c.password.is_none(), "given, so not handed back");
    assert!(c.totp_uri.contains("issuer=liaison%20ES-UDYCO"));
    let ok = a.sign_in("ana", PASSWORD, &code(&c, NOW), NOW, "127.0.0.1").await.unwrap();
    assert_eq!(ok.name, officer("ana"));
    assert_eq!(ok.last_sign_in, Some(NOW * 1000));
    // The same code again (replayed): refused, and counted.
    assert_eq!(a.sign_in("ana", PASSWORD, &code(&c, NOW), NOW, "x").await, Err(SignInError::Refused));
    assert_eq!(a.get(&officer("ana")).unwrap().failures, 1);
    // The next step's code works, and clears the count.
    let later = NOW + 30;
    a.sign_in("ana", PASSWORD, &code(&c, later), later, "x").await.unwrap();
    assert_eq!(a.get(&officer("ana")).unwrap().failures, 0);
    // Unknown name, wrong password, wrong code: one answer for all.
    let t = NOW + 60;
    for (name, pw, cd) in [
        ("bob", PASSWORD, code(&c, t)),
        ("ana", "a wrong passphrase!", code(&c, t)),
        ("ana", PASSWORD, "000000".into()),
    ] {
        assert_eq!(a.sign_in(name, pw, &cd, t, "x").await, Err(SignInError::Refused), "{name}");
    }
}

#[tokio::test]
async fn failures_lock_the_account_until_reset_even_across_a_restart() {
    let (mem, a) = accounts().await;
    let c = a.add(new_account("ana"), "admin", NOW * 1000).await.unwrap();
    for i in 0..MAX_FAILURES {
        let t = NOW + u64::from(i) * 30;
        assert_eq!(a.sign_in("ana", "not the passphrase", &code(&c, t), t, "x").await, Err(SignInError::Refused));
    }
    let locked = a.get(&officer("ana")).unwrap();
    assert!(locked.locked_at.is_some() && !locked.usable());
    // Open the store again (a restart): still locked; the right password and code say so.
    let a = Accounts::load(Store::with_backend(mem).unwrap(), &node()).unwrap();
    let t = NOW + 600;
    assert_eq!(a.sign_in("ana", PASSWORD, &code(&c, t), t, "x").await, Err(SignInError::Locked));
    assert!(a.get(&officer("ana")).unwrap().locked_at.is_some());
    // A reset unlocks, with a new secret: the old one's codes no longer work.
    let fresh = a.reset(&officer("ana"), None, "admin").await.unwrap();
    let pw = fresh.password.clone().expect("generated");
    let t = NOW + 900;
    assert_eq!(a.sign_in("ana", &pw, &code(&c, t), t, "x").await, Err(SignInError::Refused));
    a.sign_in("ana", &pw, &code(&fresh, t + 30), t + 30, "x").await.unwrap();
}

#[tokio::test]
async fn disabled_accounts_cannot_sign_in_and_nothing_changes_when_the_store_fails() {
    let (mem, a) = accounts().await;
    let c = a.add(new_account("ana"), "admin", NOW * 1000).await.unwrap();
    assert!(matches!(a.add(new_account("ana"), "admin", 0).await, Err(AccountError::Exists(_))));
    a.set_disabled(&officer("ana"), true, "admin", NOW * 1000).await.unwrap();
    assert_eq!(a.sign_in("ana", PASSWORD, &code(&c, NOW), NOW, "x").await, Err(SignInError::Disabled));
    a.set_disabled(&officer("ana"), false, "admin", NOW * 1000).await.unwrap();
    // The disk fails: the sign-in is refused and nothing is put in force (the step is unused).
    mem.set_failing(true);
    let t = NOW + 30;
    assert!(matches!(a.sign_in("ana", PASSWORD, &code(&c, t), t, "x").await, Err(SignInError::Unavailable(_))));
    assert!(a.get(&officer("ana")).unwrap().last_sign_in.is_none());
    mem.set_failing(false);
    a.sign_in("ana", PASSWORD, &code(&c, t), t, "x").await.unwrap();
    // Every change and attempt is in the audit trail, under the account.
    let store = Store::with_backend(mem).unwrap();
    let actions: Vec<String> = store
        .scan(Tree::Audit, &[])
        .unwrap()
        .iter()
        .filter_map(|(_, v)| {
            let e: crate::audit::Entry = store::decode(Tree::Audit, v).ok()?;
            match e.event {
                Event::Account { account: Some(n), action, .. } if n.as_str() == "ana" => Some(action.to_string()),
                _ => None,
            }
        })
        .collect();
    assert_eq!(actions, ["added", "disabled", "sign-in refused", "enabled", "signed in"]);
}

#[test]
fn scopes_cover_partners_and_cases() {
    let s = CaseScope::parse(&["ES-2026-*".into(), "IT-77".into()]).unwrap();
    assert!(s.covers(Some(&"ES-2026-0042".parse().unwrap())));
    assert!(s.covers(Some(&"IT-77".parse().unwrap())));
    assert!(!s.covers(Some(&"IT-778".parse().unwrap())));
    assert!(!s.covers(None));
    assert!(CaseScope::parse(&["*".into()]).unwrap().covers(None));
    assert!(CaseScope::parse(&["*ES".into()]).is_err());
    assert!(CaseScope::parse(&["<script>".into()]).is_err());
    let p = PartnerScope::of(vec!["IT-DCSA".parse().unwrap()]);
    assert!(p.covers(&"IT-DCSA".parse().unwrap()) && !p.covers(&"CO-DIJIN".parse().unwrap()));
    assert!(PartnerScope::of(vec![]).covers(&"CO-DIJIN".parse().unwrap()));
}
