use super::*;

fn owner() -> KeyOwner {
    KeyOwner {
        team: Some("support-platform".into()),
        tenant: Some("acme".into()),
        app: Some("helpdesk".into()),
        environment: Some("production".into()),
    }
}

fn rand(seed: u8) -> [u8; 32] {
    let mut r = [0u8; 32];
    for (i, b) in r.iter_mut().enumerate() {
        *b = seed.wrapping_mul(31).wrapping_add(i as u8).wrapping_mul(97);
    }
    r
}

#[test]
fn issued_key_shape_and_hash() {
    let k = issue_key(&rand(1), owner(), Timestamp(1000), None);
    assert!(is_well_formed(&k.secret), "{}", k.secret);
    assert_eq!(k.record.key_id, &k.secret[..11]);
    assert_eq!(k.record.hash, KeyHash::of(&k.secret));
    assert_eq!(k.record.hash.to_hex().len(), 64);
    // Deterministic in its randomness, different for different bytes.
    assert_eq!(
        issue_key(&rand(1), owner(), Timestamp(0), None).secret,
        k.secret
    );
    assert_ne!(
        issue_key(&rand(2), owner(), Timestamp(0), None).secret,
        k.secret
    );
    // All-zero and all-ones randomness still give well-formed keys.
    assert_eq!(
        issue_key(&[0; 32], owner(), Timestamp(0), None).secret,
        format!("sg-{}", "0".repeat(32))
    );
    assert!(is_well_formed(
        &issue_key(&[0xff; 32], owner(), Timestamp(0), None).secret
    ));
}

#[test]
fn sha256_hex_known_vector() {
    assert_eq!(
        KeyHash::of("abc").to_hex(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let h = KeyHash::of("abc");
    assert_eq!(KeyHash::from_hex(&h.to_hex()), Some(h));
    assert_eq!(KeyHash::from_hex("zz"), None);
}

#[test]
fn authenticate_live_expired_revoked_unknown() {
    let now = Timestamp(1_000_000);
    let live = issue_key(&rand(1), owner(), now, None);
    let expiring = issue_key(&rand(2), owner(), now, Some(Timestamp(2_000_000)));
    let revoked = issue_key(&rand(3), owner(), now, None);
    let mut store = KeyStore::from_records([
        live.record.clone(),
        expiring.record.clone(),
        revoked.record.clone(),
    ])
    .unwrap();
    assert!(store.revoke(&revoked.record.key_id));

    let actor = store.authenticate(&live.secret, now).unwrap();
    assert_eq!(actor.key_id, live.record.key_id);
    assert_eq!(actor.team.as_deref(), Some("support-platform"));
    assert_eq!(actor.environment.as_deref(), Some("production"));

    assert!(store
        .authenticate(&expiring.secret, Timestamp(1_999_999))
        .is_ok());
    assert_eq!(
        store.authenticate(&expiring.secret, Timestamp(2_000_000)),
        Err(AuthError)
    );
    assert_eq!(store.authenticate(&revoked.secret, now), Err(AuthError));
    let unknown = issue_key(&rand(9), owner(), now, None);
    assert_eq!(store.authenticate(&unknown.secret, now), Err(AuthError));
    // Right key id, wrong rest of the key.
    let mut forged = live.secret.clone();
    forged.replace_range(30.., "XX");
    assert_eq!(store.authenticate(&forged, now), Err(AuthError));
    assert_eq!(store.authenticate("sg-short", now), Err(AuthError));
    assert_eq!(store.authenticate("", now), Err(AuthError));
    // Lookup by hash directly.
    assert!(store
        .lookup(&live.record.key_id, &KeyHash::of(&live.secret), now)
        .is_ok());
}

#[test]
fn store_rejects_duplicate_and_bad_ids() {
    let k = issue_key(&rand(1), owner(), Timestamp(0), None);
    let mut store = KeyStore::new();
    store.insert(k.record.clone()).unwrap();
    assert!(matches!(
        store.insert(k.record.clone()),
        Err(KeyStoreError::DuplicateKeyId(_))
    ));
    let mut bad = k.record.clone();
    bad.key_id = "nope".into();
    assert!(matches!(store.insert(bad), Err(KeyStoreError::BadKeyId(_))));
    assert_eq!(store.len(), 1);
}

#[test]
fn record_serde_round_trip() {
    let k = issue_key(&rand(4), owner(), Timestamp(5), Some(Timestamp(10)));
    let json = serde_json::to_string(&k.record).unwrap();
    assert!(json.contains(&k.record.hash.to_hex()));
    assert!(!json.contains(&k.secret));
    let back: KeyRecord = serde_json::from_str(&json).unwrap();
    assert_eq!(back, k.record);
}

#[test]
fn credential_from_headers() {
    let key = "sg-0123456789abcdefghijABCDEFGHIJ01";
    assert_eq!(
        parse_credential(Some(format!("Bearer {key}").as_bytes()), None),
        Ok(key)
    );
    assert_eq!(
        parse_credential(Some(format!("bearer  {key} ").as_bytes()), None),
        Ok(key)
    );
    assert_eq!(parse_credential(None, Some(key.as_bytes())), Ok(key));
    assert_eq!(
        parse_credential(
            Some(format!("Bearer {key}").as_bytes()),
            Some(key.as_bytes())
        ),
        Ok(key)
    );
    assert_eq!(
        parse_credential(Some(b"Bearer sg-a"), Some(b"sg-b")),
        Err(AuthError)
    );
    assert_eq!(
        parse_credential(Some(b"Basic dXNlcjpwYXNz"), None),
        Err(AuthError)
    );
    assert_eq!(parse_credential(Some(b"Bearer "), None), Err(AuthError));
    assert_eq!(parse_credential(None, None), Err(AuthError));
    assert_eq!(parse_credential(None, Some(b"\xff\xfe")), Err(AuthError));
}

/// The audit's actor object is what serde_json writes for the same
/// fields, escapes and nulls included.
#[test]
fn an_actors_json_is_its_fields_escaped() {
    let fields = ActorFields {
        key_id: "sg-AAAAAAAA".into(),
        team: Some("r&d \"core\"\n\u{1}é".into()),
        tenant: None,
        app: Some("a\\b".into()),
        environment: None,
    };
    let actor = Actor::new(fields.clone());
    let parsed: serde_json::Value = serde_json::from_str(actor.json()).unwrap();
    assert_eq!(
        parsed,
        serde_json::json!({
            "key_id": "sg-AAAAAAAA", "team": fields.team, "tenant": null,
            "app": "a\\b", "environment": null,
        })
    );
    assert!(actor
        .json()
        .starts_with(r#"{"key_id":"sg-AAAAAAAA","team":"r&d \"core\"\n\u0001é","tenant":null"#));
    assert_eq!(*actor, fields);
}
