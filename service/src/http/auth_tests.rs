//! Unit tests of `auth.rs`: scopes, expiry, the tokens file, the 503 of a source not known yet.

use super::*;

fn auth(tokens: Vec<Token>) -> Auth {
    Auth {
        tokens,
        tokens_file: None,
        database: false,
        cache_ttl: Duration::from_secs(30),
    }
}

fn token(name: &str, secret: &str, scopes: Vec<Scope>) -> Token {
    Token {
        name: name.into(),
        sha256: crate::token::hash(secret),
        scopes,
    }
}

#[test]
fn scopes_are_checked_and_expired_tokens_refused() {
    let tokens = Tokens::new(
        &auth(vec![token("w", "s1", vec![Scope::Write])]),
        &Schema::default(),
        false,
    );
    assert_eq!(
        tokens
            .check(Some("s1"), Scope::Write)
            .map(|p| p.name.clone()),
        Ok("w".into())
    );
    assert_eq!(
        tokens.check(Some("s1"), Scope::Read).unwrap_err().status,
        403
    );
    assert_eq!(
        tokens.check(Some("nope"), Scope::Write).unwrap_err().status,
        401
    );
    assert_eq!(tokens.check(None, Scope::Write).unwrap_err().status, 401);
    let expired = Principal {
        name: "old".into(),
        scopes: vec![Scope::Read],
        expires_at: Some(Utc::now() - chrono::Duration::seconds(1)),
    };
    let digest: [u8; 32] = Sha256::digest(b"s2").into();
    tokens
        .database
        .set
        .store(Arc::new(HashMap::from([(digest, Arc::new(expired))])));
    assert_eq!(
        tokens.check(Some("s2"), Scope::Read).unwrap_err().status,
        401
    );
}

#[tokio::test]
async fn the_tokens_file_is_read_again_and_a_bad_read_keeps_the_last_set() {
    let dir = std::env::temp_dir().join(format!("opsdb-tokens-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("tokens.toml");
    let line = |secret: &str| {
        format!(
            "tokens = [{{ name = \"f\", sha256 = \"{}\", scopes = [\"read\"] }}]\n",
            crate::token::hash(secret)
        )
    };
    std::fs::write(&path, line("first")).expect("write");
    let mut a = auth(Vec::new());
    a.tokens_file = Some(path.clone());
    let tokens = Tokens::new(&a, &Schema::default(), false);
    assert!(
        tokens.lookup("first").is_none(),
        "not read before the first refresh"
    );
    tokens.refresh(None).await;
    assert!(tokens.lookup("first").is_some());
    std::fs::write(&path, line("second")).expect("write");
    tokens.refresh(None).await;
    assert!(
        tokens.lookup("first").is_none(),
        "a token removed from the file is gone"
    );
    assert!(tokens.lookup("second").is_some());
    std::fs::write(&path, "tokens = [ broken").expect("write");
    tokens.refresh(None).await;
    assert!(
        tokens.lookup("second").is_some(),
        "a bad file keeps the last set"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_unknown_token_is_503_until_a_configured_source_is_read() {
    let dir = std::env::temp_dir().join(format!("opsdb-tokens-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("tokens.toml");
    let mut a = auth(vec![token("c", "from-config", vec![Scope::Write])]);
    a.tokens_file = Some(path.clone());
    let tokens = Tokens::new(&a, &Schema::default(), false);
    let unknown = tokens.check(Some("nope"), Scope::Write).unwrap_err();
    assert_eq!(
        (unknown.status.as_u16(), unknown.code, unknown.retry_after),
        (503, "token_source_unavailable", Some(30))
    );
    assert!(tokens.check(Some("from-config"), Scope::Write).is_ok());
    assert_eq!(tokens.check(None, Scope::Write).unwrap_err().status, 401);
    tokens.refresh(None).await;
    assert_eq!(
        tokens.check(Some("nope"), Scope::Write).unwrap_err().status,
        503,
        "a file that cannot be read settles nothing"
    );
    let health = tokens.health();
    assert!(health.table.is_none(), "no read source: no table");
    let file = health.file.expect("file configured");
    assert_eq!(file.source, crate::http::token_source::Origin::None);
    assert!(file.last_error.is_some());
    std::fs::write(&path, "tokens = []\n").expect("write");
    tokens.refresh(None).await;
    assert_eq!(
        tokens.check(Some("nope"), Scope::Write).unwrap_err().status,
        401
    );
    let file = tokens.health().file.expect("file configured");
    assert_eq!(file.source, crate::http::token_source::Origin::Read);
    assert!(file.read_at.is_some() && file.last_error.is_none());
    let _ = std::fs::remove_dir_all(&dir);
}
