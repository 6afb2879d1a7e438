//! The dashboard's HTTP side (guarantee 8): the token link sets a strict HttpOnly session cookie,
//! the cookie stands for the admin on `/api/*` only, and a change made with it must come from the
//! page itself (same origin and the `X-Conclave-Csrf` header). The page itself is tested in a real
//! browser by `tests/browser/`.

use reqwest::header::{CONTENT_SECURITY_POLICY, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::{ADMIN, TestServer};

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// Logs in with the token link and returns the `name=value` pair of the session cookie.
async fn log_in(server: &TestServer) -> String {
    let response = no_redirects()
        .get(format!("{}/?token={ADMIN}", server.base))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let set_cookie = response
        .headers()
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .expect("set-cookie")
        .to_string();
    set_cookie
        .split(';')
        .next()
        .expect("cookie pair")
        .to_string()
}

#[tokio::test]
async fn the_token_link_sets_a_strict_http_only_cookie_and_drops_the_token_from_the_url() {
    let server = TestServer::start().await;
    let response = no_redirects()
        .get(format!("{}/?token={ADMIN}", server.base))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok()),
        Some("/")
    );
    let cookie = response
        .headers()
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .expect("set-cookie")
        .to_string();
    let attributes: Vec<&str> = cookie.split(';').map(str::trim).collect();
    for wanted in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(attributes.contains(&wanted), "{wanted} missing: {cookie}");
    }
    assert!(
        !cookie.contains(ADMIN),
        "the cookie must not carry the token"
    );

    // With the cookie: the page (under a strict CSP, scripts only from files) and the API.
    let pair = log_in(&server).await;
    let page = server
        .http
        .get(format!("{}/", server.base))
        .header(COOKIE, &pair)
        .send()
        .await
        .expect("send");
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page
        .headers()
        .get(CONTENT_SECURITY_POLICY)
        .and_then(|v| v.to_str().ok())
        .expect("csp")
        .to_string();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    let html = page.text().await.expect("html");
    assert!(html.contains("id=\"agents\""));
    for script in html.split("<script").skip(1) {
        assert!(
            script.trim_start().starts_with("src="),
            "inline script: {script}"
        );
    }
    let status = server
        .http
        .get(format!("{}/api/status", server.base))
        .header(COOKIE, &pair)
        .send()
        .await
        .expect("send");
    assert_eq!(status.status(), StatusCode::OK);
    // The stream too.
    let stream = server
        .http
        .get(format!("{}/api/events/stream", server.base))
        .header(COOKIE, &pair)
        .send()
        .await
        .expect("send");
    assert_eq!(stream.status(), StatusCode::OK);
}

#[tokio::test]
async fn without_the_token_the_page_says_which_link_to_open() {
    let server = TestServer::start().await;
    for path in ["/", "/?token=cva_wrong", "/?token="] {
        let response = no_redirects()
            .get(format!("{}{path}", server.base))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert!(response.headers().get(SET_COOKIE).is_none(), "{path}");
        assert!(response.headers().get(CONTENT_SECURITY_POLICY).is_some());
        let html = response.text().await.expect("html");
        assert!(html.contains("conclave serve"), "{html}");
    }
    // A forged cookie is no login, for the page or the API.
    let pair = log_in(&server).await;
    let (name, _) = pair.split_once('=').expect("pair");
    let forged = format!("{name}=0123456789abcdef");
    for path in ["/", "/api/status"] {
        let response = server
            .http
            .get(format!("{}{path}", server.base))
            .header(COOKIE, &forged)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    // The assets hold no data and load before login (the 401 page uses the stylesheet).
    let css = server
        .http
        .get(format!("{}/assets/app.css", server.base))
        .send()
        .await
        .expect("send");
    assert_eq!(css.status(), StatusCode::OK);
    assert_eq!(
        css.headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some("text/css; charset=utf-8")
    );
}

#[tokio::test]
async fn the_cookie_counts_on_the_api_only() {
    let server = TestServer::start().await;
    let pair = log_in(&server).await;
    for path in ["/metrics", "/mcp"] {
        let response = server
            .http
            .post(format!("{}{path}", server.base))
            .header(COOKIE, &pair)
            .header("origin", &server.base)
            .header("x-conclave-csrf", "1")
            .json(&json!({}))
            .send()
            .await
            .expect("send");
        assert!(
            response.status() == StatusCode::UNAUTHORIZED
                || response.status() == StatusCode::METHOD_NOT_ALLOWED,
            "{path}: {}",
            response.status()
        );
    }
    let metrics = server
        .http
        .get(format!("{}/metrics", server.base))
        .header(COOKIE, &pair)
        .send()
        .await
        .expect("send");
    assert_eq!(metrics.status(), StatusCode::UNAUTHORIZED);
}

/// One state-changing request made with the cookie, and whether it must be accepted.
struct Case {
    name: &'static str,
    origin: Option<&'static str>,
    referer: Option<&'static str>,
    csrf_header: bool,
    accepted: bool,
}

#[tokio::test]
async fn changes_made_with_the_cookie_must_come_from_the_page() {
    let server = TestServer::start().await;
    let bob = server.agent("bob", None).await;
    let pair = log_in(&server).await;
    let cases = [
        Case {
            name: "same origin with the header",
            origin: Some("SELF"),
            referer: None,
            csrf_header: true,
            accepted: true,
        },
        Case {
            name: "same-origin Referer without Origin",
            origin: None,
            referer: Some("SELF/"),
            csrf_header: true,
            accepted: true,
        },
        Case {
            name: "another origin",
            origin: Some("http://evil.example"),
            referer: None,
            csrf_header: true,
            accepted: false,
        },
        Case {
            name: "another port on the same host",
            origin: Some("http://127.0.0.1:1"),
            referer: None,
            csrf_header: true,
            accepted: false,
        },
        Case {
            name: "another origin's Referer",
            origin: None,
            referer: Some("http://evil.example/page"),
            csrf_header: true,
            accepted: false,
        },
        Case {
            name: "neither Origin nor Referer",
            origin: None,
            referer: None,
            csrf_header: true,
            accepted: false,
        },
        Case {
            name: "same origin without the header (a plain form post)",
            origin: Some("SELF"),
            referer: None,
            csrf_header: false,
            accepted: false,
        },
    ];
    for case in &cases {
        let body = format!("from the dashboard: {}", case.name);
        let mut request = server
            .http
            .post(format!("{}/api/messages", server.base))
            .header(COOKIE, &pair)
            .json(&json!({ "to": "bob", "body": body }));
        if let Some(origin) = case.origin {
            request = request.header("origin", origin.replace("SELF", &server.base));
        }
        if let Some(referer) = case.referer {
            request = request.header("referer", referer.replace("SELF", &server.base));
        }
        if case.csrf_header {
            request = request.header("x-conclave-csrf", "1");
        }
        let response = request.send().await.expect("send");
        let status = response.status();
        let text = response.text().await.expect("body");
        if case.accepted {
            assert_eq!(status, StatusCode::CREATED, "{}: {text}", case.name);
            assert!(
                text.contains("\"sender\":\"admin\""),
                "{}: {text}",
                case.name
            );
        } else {
            assert_eq!(status, StatusCode::FORBIDDEN, "{}: {text}", case.name);
            assert!(text.contains("cross-site"), "{}: {text}", case.name);
        }
    }
    // Refused requests changed nothing: bob received exactly the accepted ones.
    let (status, inbox) = server.with_token(&bob).get("/api/inbox").await;
    assert_eq!(status, StatusCode::OK);
    let bodies: Vec<&str> = inbox["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["body"].as_str())
        .collect();
    let expected: Vec<String> = cases
        .iter()
        .filter(|case| case.accepted)
        .map(|case| format!("from the dashboard: {}", case.name))
        .collect();
    assert_eq!(bodies, expected);

    // A bearer token is not affected: no header, a foreign Origin, still accepted.
    let response = server
        .as_admin()
        .request(Method::POST, "/api/messages")
        .header("origin", "http://evil.example")
        .json(&json!({ "to": "bob", "body": "by token" }))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::CREATED);
}
