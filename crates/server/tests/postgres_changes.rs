//! postgres_changes end to end: a real PostgreSQL 15 (scripts/postgres.sh), the real server
//! binary as a process, and a raw WebSocket client speaking vsn 1.0.0 frames.
//!
//! The database comes from `DATABASE_URL`, else from `scripts/postgres.sh` (which installs and
//! starts a throwaway cluster on 127.0.0.1:54329). If neither works the tests print a loud
//! SKIP, unless `REQUIRE_POSTGRES=1`, where they fail.
//! Every test uses its own tables, publication and replication slot, so they run in parallel;
//! the database-restart test uses a second cluster of its own.
#![allow(clippy::unwrap_used)]

mod support;

use support::pg_server::*;
use support::postgres::{db, postgres_sh, require_db};

use support::ANON;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use supa_realtime_server::auth::sign_hs256;
use supa_realtime_server::config::DEFAULT_JWT_SECRET;
const DB_DOWN: &str = "Realtime was unable to connect to the project database";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_bindings_and_payload_shape() {
    let Some(url) = require_db("events_bindings_and_payload_shape") else {
        return;
    };
    let c = db(&url).await;
    prepare(
        &c,
        "ev",
        "DROP TABLE IF EXISTS pc_ev; CREATE TABLE pc_ev (id int PRIMARY KEY, title text, done bool DEFAULT false);
         GRANT SELECT ON pc_ev TO PUBLIC;",
        &["pc_ev"],
    )
    .await;
    let srv = ServerProc::start(Some(&url), "ev", &[], 0, None).await;
    let mut ws = Ws::connect(&srv.addr).await;
    let ids = ws
        .join(
            "ev",
            ANON,
            json!([
                {"event": "INSERT", "schema": "public", "table": "pc_ev"},
                {"event": "UPDATE", "schema": "public", "table": "pc_ev"},
                {"event": "DELETE", "schema": "public", "table": "pc_ev"},
                {"event": "*", "schema": "public", "table": "pc_ev"},
                {"event": "*", "schema": "public"},
                {"event": "*", "table": "pc_ev", "filter": "id=eq.1"}
            ]),
        )
        .await;
    assert_eq!(ids.len(), 6);
    ws.subscribed().await;

    c.execute("INSERT INTO pc_ev (id, title) VALUES (1, 'first')", &[])
        .await
        .unwrap();
    let (got, data) = ws.change(WAIT).await.expect("insert");
    assert_eq!(got, BTreeSet::from([ids[0], ids[3], ids[4], ids[5]]));
    assert_eq!(data["type"], "INSERT");
    assert_eq!(data["schema"], "public");
    assert_eq!(data["table"], "pc_ev");
    assert_eq!(
        data["record"],
        json!({"id": 1, "title": "first", "done": false})
    );
    assert!(data.get("old_record").is_none(), "{data}");
    assert_eq!(data["errors"], Value::Null);
    assert_eq!(
        data["columns"],
        json!([{"name": "id", "type": "int4"}, {"name": "title", "type": "text"}, {"name": "done", "type": "bool"}])
    );
    let ts = data["commit_timestamp"].as_str().unwrap();
    assert_eq!(ts.len(), 24, "{ts}");
    assert!(
        ts.ends_with('Z') && &ts[10..11] == "T" && &ts[19..20] == ".",
        "{ts}"
    );

    c.execute(
        "UPDATE pc_ev SET title = 'second', done = true WHERE id = 1",
        &[],
    )
    .await
    .unwrap();
    let (got, data) = ws.change(WAIT).await.expect("update");
    assert_eq!(got, BTreeSet::from([ids[1], ids[3], ids[4], ids[5]]));
    assert_eq!(data["type"], "UPDATE");
    assert_eq!(
        data["record"],
        json!({"id": 1, "title": "second", "done": true})
    );
    assert_eq!(data["old_record"], json!({"id": 1}));

    c.execute("DELETE FROM pc_ev WHERE id = 1", &[])
        .await
        .unwrap();
    let (got, data) = ws.change(WAIT).await.expect("delete");
    assert_eq!(got, BTreeSet::from([ids[2], ids[3], ids[4], ids[5]]));
    assert_eq!(data["type"], "DELETE");
    assert_eq!(data["old_record"], json!({"id": 1}));
    assert!(data.get("record").is_none(), "{data}");
    // exactly one message per change per channel
    assert!(ws.change(QUIET).await.is_none());

    // REPLICA IDENTITY FULL: the whole old row
    c.batch_execute(
        "ALTER TABLE pc_ev REPLICA IDENTITY FULL; INSERT INTO pc_ev VALUES (2, 'x', false)",
    )
    .await
    .unwrap();
    ws.change(WAIT).await.expect("insert 2");
    c.execute("UPDATE pc_ev SET title = 'y' WHERE id = 2", &[])
        .await
        .unwrap();
    let (_, data) = ws.change(WAIT).await.expect("update 2");
    assert_eq!(
        data["old_record"],
        json!({"id": 2, "title": "x", "done": false})
    );

    // latency: commit → frame on the socket
    let mut lat = Vec::new();
    for i in 0..30 {
        let t = Instant::now();
        c.execute(
            "INSERT INTO pc_ev (id, title) VALUES ($1, 'lat')",
            &[&(100 + i)],
        )
        .await
        .unwrap();
        let committed = t.elapsed();
        ws.change(WAIT).await.expect("latency insert");
        lat.push(t.elapsed().saturating_sub(committed).as_secs_f64() * 1000.0);
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    eprintln!(
        "postgres_changes latency commit→client over {} inserts: p50 {:.2} ms, p90 {:.2} ms, max {:.2} ms",
        lat.len(),
        lat[lat.len() / 2],
        lat[lat.len() * 9 / 10],
        lat[lat.len() - 1]
    );
    // a 2,000-row transaction: every row arrives, in order
    let t = Instant::now();
    c.execute(
        "INSERT INTO pc_ev (id, title) SELECT g, 'bulk' FROM generate_series(1000, 2999) g",
        &[],
    )
    .await
    .unwrap();
    for want in 1000..3000 {
        let (_, data) = ws.change(WAIT).await.expect("bulk row");
        assert_eq!(data["record"]["id"], want);
    }
    eprintln!(
        "postgres_changes: 2,000-row transaction delivered in {:.1} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    drop(srv);
    drop_slot(&c, "slot_ev").await;
}

/// id, name, score, ok, note, at
type Row = (
    i32,
    &'static str,
    &'static str,
    bool,
    Option<&'static str>,
    &'static str,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_operators() {
    let Some(url) = require_db("filter_operators") else {
        return;
    };
    let c = db(&url).await;
    prepare(
        &c,
        "flt",
        "DROP TABLE IF EXISTS pc_flt; CREATE TABLE pc_flt (id int PRIMARY KEY, name text, score numeric, ok bool, note text, at timestamptz);
         GRANT SELECT ON pc_flt TO PUBLIC;",
        &["pc_flt"],
    )
    .await;
    let srv = ServerProc::start(Some(&url), "flt", &[], 0, None).await;
    let mut ws = Ws::connect(&srv.addr).await;
    let filters = [
        "",                            // 0 always
        "id=eq.2",                     // 1
        "id=neq.2",                    // 2
        "id=lt.3",                     // 3
        "id=lte.3",                    // 4
        "id=gt.3",                     // 5
        "id=gte.3",                    // 6
        "id=in.(1,4,10)",              // 7
        "id=not.in.(1,4,10)",          // 8
        "name=like.A%",                // 9
        "name=ilike.a%",               // 10
        "note=is.null",                // 11
        "note=not.is.null",            // 12
        "score=gt.2.5,score=lt.100",   // 13 comma = AND, numeric order
        r#"name=eq."b, (quoted)""#,    // 14 quoted value
        "ok=is.true",                  // 15
        "name=not.eq.Anna",            // 16
        "at=gte.2024-01-01T00:00:00Z", // 17 timestamptz, cast by PostgreSQL
        "score=eq.10",                 // 18 10.0 = 10 numerically
        "name=match.^A",               // 19 regex
        "name=imatch.^a.*s$",          // 20 case-insensitive regex
    ];
    let bindings: Vec<Value> = filters
        .iter()
        .map(|f| {
            if f.is_empty() {
                json!({"event": "INSERT", "table": "pc_flt"})
            } else {
                json!({"event": "INSERT", "schema": "public", "table": "pc_flt", "filter": f})
            }
        })
        .collect();
    let ids = ws.join("flt", ANON, Value::Array(bindings)).await;
    ws.subscribed().await;
    let rows: [Row; 5] = [
        (1, "Anna", "1.5", true, None, "2023-12-31 23:00:00+00"),
        (2, "anders", "3", false, Some("n"), "2024-01-01 00:00:00+00"),
        (
            3,
            "b, (quoted)",
            "100",
            true,
            None,
            "2024-06-01 00:00:00+00",
        ),
        (4, "Bob", "10.0", false, Some("x"), "2023-01-01 00:00:00+00"),
        (10, "Alice", "2.5", true, None, "2025-01-01 00:00:00+00"),
    ];
    let expect: [&[usize]; 5] = [
        &[0, 2, 3, 4, 7, 9, 10, 11, 15, 19],
        &[0, 1, 3, 4, 8, 10, 12, 13, 16, 17, 20],
        &[0, 2, 4, 6, 8, 11, 14, 15, 16, 17],
        &[0, 2, 5, 6, 7, 12, 13, 16, 18],
        &[0, 2, 5, 6, 7, 9, 10, 11, 15, 16, 17, 19],
    ];
    for (row, want) in rows.iter().zip(expect) {
        c.execute(
            "INSERT INTO pc_flt VALUES ($1, $2, $3::text::numeric, $4, $5, $6::text::timestamptz)",
            &[&row.0, &row.1, &row.2, &row.3, &row.4, &row.5],
        )
        .await
        .unwrap();
        let (got, data) = ws.change(WAIT).await.expect("change");
        let want: BTreeSet<u64> = want.iter().map(|i| ids[*i]).collect();
        let name = |set: &BTreeSet<u64>| -> Vec<&str> {
            filters
                .iter()
                .zip(&ids)
                .filter(|(_, id)| set.contains(id))
                .map(|(f, _)| *f)
                .collect()
        };
        assert_eq!(
            got,
            want,
            "row {} got {:?} want {:?} ({data})",
            row.0,
            name(&got),
            name(&want)
        );
    }
    drop(srv);
    drop_slot(&c, "slot_flt").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_params_get_upstream_errors() {
    let Some(url) = require_db("invalid_params_get_upstream_errors") else {
        return;
    };
    let c = db(&url).await;
    prepare(
        &c,
        "bad",
        "DROP TABLE IF EXISTS pc_bad, pc_notpub; CREATE TABLE pc_bad (id int PRIMARY KEY, n int); CREATE TABLE pc_notpub (id int PRIMARY KEY);
         GRANT SELECT ON pc_bad, pc_notpub TO PUBLIC;",
        &["pc_bad"],
    )
    .await;
    let srv = ServerProc::start(Some(&url), "bad", &[], 0, None).await;
    let mut ws = Ws::connect(&srv.addr).await;
    let cases = [
        (json!({"event": "*", "table": "pc_bad", "filter": "id=in.1,2"}), "Error parsing `filter` params: `in` filter value must be wrapped by parentheses".to_string()),
        (json!({"event": "*", "table": "pc_bad", "filter": "foo=hey"}), r#"Error parsing `filter` params: ["foo", "hey"]"#.to_string()),
        (json!({"event": "*", "table": "pc_bad", "filter": "id=eq.1,,n=eq.2"}), "Error parsing `filter` params: filter must not contain empty segments (check for extra commas)".to_string()),
        (json!({"event": "*"}), "No subscription params provided. Please provide at least a `schema` or `table` to subscribe to: %{\"event\" => \"*\"}".to_string()),
        (
            json!({"event": "*", "schema": "public", "table": "pc_notpub"}),
            "Unable to subscribe to changes with given parameters. Please check Realtime is enabled for the given connect parameters: [event: *, schema: public, table: pc_notpub, filters: [], select: nil]".to_string(),
        ),
        (
            json!({"event": "*", "schema": "public", "table": "no_such_table"}),
            "Unable to subscribe to changes with given parameters. Please check Realtime is enabled for the given connect parameters: [event: *, schema: public, table: no_such_table, filters: [], select: nil]".to_string(),
        ),
    ];
    for (i, (binding, want)) in cases.iter().enumerate() {
        ws.join(&format!("bad{i}"), ANON, json!([binding])).await;
        let (status, msg) = ws.system(WAIT).await.expect("system error");
        assert_eq!(
            (status.as_str(), msg.as_str()),
            ("error", want.as_str()),
            "case {i}"
        );
    }
    // a bad value for the column type / an unknown column: PostgreSQL's text
    ws.join(
        "bad_cast",
        ANON,
        json!([{"event": "*", "table": "pc_bad", "filter": "n=eq.abc"}]),
    )
    .await;
    let (status, msg) = ws.system(WAIT).await.unwrap();
    assert_eq!(status, "error");
    assert!(
        msg.starts_with(
            "Unable to subscribe to changes with given parameters. An exception happened"
        ),
        "{msg}"
    );
    assert!(
        msg.contains("invalid input syntax for type integer"),
        "{msg}"
    );
    ws.join(
        "bad_col",
        ANON,
        json!([{"event": "*", "table": "pc_bad", "filter": "nope=eq.1"}]),
    )
    .await;
    let (_, msg) = ws.system(WAIT).await.unwrap();
    assert!(
        msg.ends_with("Exception: invalid column for filter nope"),
        "{msg}"
    );
    drop(srv);
    drop_slot(&c, "slot_bad").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_level_security() {
    let Some(url) = require_db("row_level_security") else {
        return;
    };
    let c = db(&url).await;
    prepare(
        &c,
        "rls",
        "DROP TABLE IF EXISTS pc_rls, pc_rls500; CREATE TABLE pc_rls (id int PRIMARY KEY, owner uuid, body text);
         ALTER TABLE pc_rls ENABLE ROW LEVEL SECURITY;
         CREATE TABLE pc_rls500 (id int PRIMARY KEY); ALTER TABLE pc_rls500 ENABLE ROW LEVEL SECURITY;",
        &["pc_rls", "pc_rls500"],
    )
    .await;
    let srv = ServerProc::start(Some(&url), "rls", &[], 0, None).await;
    let (u1, u2) = (
        "11111111-1111-1111-1111-111111111111",
        "22222222-2222-2222-2222-222222222222",
    );
    let b = json!([{"event": "*", "schema": "public", "table": "pc_rls"}]);
    let mut anon = Ws::connect(&srv.addr).await;
    anon.join("rls", ANON, b.clone()).await;
    anon.subscribed().await;
    // roles and auth.uid() exist now (the server created them): write the policy
    c.batch_execute(
        "GRANT SELECT ON pc_rls TO anon, authenticated;
         CREATE POLICY owner_reads ON pc_rls FOR SELECT TO authenticated USING (owner = auth.uid());",
    )
    .await
    .unwrap();
    let mut one = Ws::connect(&srv.addr).await;
    one.join("rls", &user_token(u1), b.clone()).await;
    one.subscribed().await;
    let mut one_again = Ws::connect(&srv.addr).await; // same claims: shares the check
    one_again.join("rls", &user_token(u1), b.clone()).await;
    one_again.subscribed().await;
    let mut two = Ws::connect(&srv.addr).await;
    two.join("rls", &user_token(u2), b.clone()).await;
    two.subscribed().await;

    c.execute(
        "INSERT INTO pc_rls VALUES (1, $1::text::uuid, 'secret of one')",
        &[&u1],
    )
    .await
    .unwrap();
    let (_, data) = one.change(WAIT).await.expect("owner sees the insert");
    assert_eq!(data["record"]["body"], "secret of one");
    assert_eq!(data["record"]["owner"], u1);
    let (_, again) = one_again
        .change(WAIT)
        .await
        .expect("second owner socket sees the insert");
    assert_eq!(again, data);
    assert!(
        two.change(QUIET).await.is_none(),
        "another user must not see it"
    );
    assert!(
        anon.change(Duration::from_millis(100)).await.is_none(),
        "anon must not see it"
    );

    c.execute(
        "UPDATE pc_rls SET owner = $1::text::uuid WHERE id = 1",
        &[&u2],
    )
    .await
    .unwrap();
    let (_, data) = two.change(WAIT).await.expect("new owner sees the update");
    assert_eq!(data["type"], "UPDATE");
    assert!(
        one.change(QUIET).await.is_none(),
        "old owner no longer sees it"
    );

    // DELETE bypasses RLS; old_record reduced to the primary key
    c.execute("DELETE FROM pc_rls WHERE id = 1", &[])
        .await
        .unwrap();
    for ws in [&mut anon, &mut one, &mut two] {
        let (_, data) = ws.change(WAIT).await.expect("delete reaches everyone");
        assert_eq!(data["type"], "DELETE");
        assert_eq!(data["old_record"], json!({"id": 1}));
    }

    // a policy that raises for some claims: those channels get upstream's Error 500, others
    // are unaffected
    c.batch_execute(
        "GRANT SELECT ON pc_rls500 TO authenticated;
         CREATE POLICY by_level ON pc_rls500 FOR SELECT TO authenticated USING ((auth.jwt() ->> 'level')::int > 0);",
    )
    .await
    .unwrap();
    let level = |l: &str| {
        sign_hs256(
            DEFAULT_JWT_SECRET,
            &json!({"role": "authenticated", "sub": u1, "level": l, "exp": now_secs() + 3600}),
        )
    };
    let b500 = json!([{"event": "INSERT", "table": "pc_rls500"}]);
    let mut good = Ws::connect(&srv.addr).await;
    good.join("rls500", &level("5"), b500.clone()).await;
    good.subscribed().await;
    let mut bad = Ws::connect(&srv.addr).await;
    bad.join("rls500", &level("oops"), b500.clone()).await;
    bad.subscribed().await;
    c.execute("INSERT INTO pc_rls500 VALUES (7)", &[])
        .await
        .unwrap();
    let (_, data) = good.change(WAIT).await.expect("visible row");
    assert_eq!(data["record"], json!({"id": 7}));
    let (_, data) = bad.change(WAIT).await.expect("error 500 notice");
    assert_eq!(
        data["errors"],
        json!(["Error 500: Internal Server Error, RLS policy evaluation failed"])
    );
    assert_eq!(data["record"], json!({}));
    assert_eq!(data["columns"], json!([]));
    drop(srv);
    drop_slot(&c, "slot_rls").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_are_typed() {
    let Some(url) = require_db("values_are_typed") else {
        return;
    };
    let c = db(&url).await;
    prepare(
        &c,
        "typ",
        "DROP TABLE IF EXISTS pc_typ; DROP TYPE IF EXISTS pc_mood; CREATE TYPE pc_mood AS ENUM ('sad', 'happy');
         CREATE TABLE pc_typ (
           id int8 PRIMARY KEY, i2 int2, i4 int4, f4 float4, f8 float8, num numeric(10,2), b bool, t text,
           vc varchar(10), u uuid, j json, jb jsonb, ts timestamp, tstz timestamptz, d date, tm time,
           ia int4[], ta text[], by bytea, mood pc_mood, iv interval, nul text, nan float8);
         GRANT SELECT ON pc_typ TO PUBLIC;",
        &["pc_typ"],
    )
    .await;
    let srv = ServerProc::start(Some(&url), "typ", &[], 0, None).await;
    let mut sel = Ws::connect(&srv.addr).await;
    sel.join(
        "typ_sel",
        ANON,
        json!([{"event": "INSERT", "schema": "public", "table": "pc_typ", "select": ["t", "b"]}]),
    )
    .await;
    sel.subscribed().await;
    let mut ws = Ws::connect(&srv.addr).await;
    ws.join(
        "typ",
        ANON,
        json!([{"event": "INSERT", "schema": "public", "table": "pc_typ"}]),
    )
    .await;
    ws.subscribed().await;
    c.batch_execute(
        r#"INSERT INTO pc_typ VALUES (9007199254740993, -2, 42, 1.5, 2.25, 12.50, true, 'hé "q"', 'v',
           'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, "x"]}', '{"b": {"c": null}}',
           '2024-02-03 04:05:06.789', '2024-02-03 04:05:06.789+02', '2024-02-03', '04:05:06',
           '{1,NULL,3}', '{"a b","c,d",NULL}', '\x0102ff', 'happy', '1 day 02:00:00', NULL, 'NaN')"#,
    )
    .await
    .unwrap();
    let (_, data) = ws.change(WAIT).await.expect("insert");
    let want = json!({
        "id": 9007199254740993i64, "i2": -2, "i4": 42, "f4": 1.5, "f8": 2.25, "num": 12.5, "b": true,
        "t": "hé \"q\"", "vc": "v", "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "j": {"a": [1, "x"]}, "jb": {"b": {"c": null}},
        "ts": "2024-02-03T04:05:06.789", "tstz": "2024-02-03T02:05:06.789+00:00", "d": "2024-02-03", "tm": "04:05:06",
        "ia": [1, null, 3], "ta": ["a b", "c,d", null], "by": "\\x0102ff", "mood": "happy", "iv": "1 day 02:00:00",
        "nul": null, "nan": "NaN"
    });
    let rec = data["record"].as_object().unwrap();
    for (k, v) in want.as_object().unwrap() {
        assert_eq!(rec.get(k), Some(v), "column {k}: {}", data["record"]);
    }
    let types: HashMap<String, String> = data["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (k, t) in [
        ("id", "int8"),
        ("num", "numeric"),
        ("ia", "_int4"),
        ("ta", "_text"),
        ("tstz", "timestamptz"),
        ("mood", "pc_mood"),
        ("jb", "jsonb"),
        ("vc", "varchar"),
    ] {
        assert_eq!(types.get(k).map(String::as_str), Some(t), "type of {k}");
    }
    // `select`: only the chosen columns plus the primary key
    let (_, data) = sel.change(WAIT).await.expect("insert (select)");
    assert_eq!(
        data["record"],
        json!({"id": 9007199254740993i64, "b": true, "t": "hé \"q\""})
    );
    let names: Vec<&str> = data["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["id", "b", "t"]);
    drop(srv);
    drop_slot(&c, "slot_typ").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_record_gets_413() {
    let Some(url) = require_db("large_record_gets_413") else {
        return;
    };
    let c = db(&url).await;
    prepare(
        &c,
        "big",
        "DROP TABLE IF EXISTS pc_big; CREATE TABLE pc_big (id int PRIMARY KEY, small text, big text); GRANT SELECT ON pc_big TO PUBLIC;",
        &["pc_big"],
    )
    .await;
    let srv = ServerProc::start(Some(&url), "big", &[], 0, None).await;
    let mut ws = Ws::connect(&srv.addr).await;
    ws.join(
        "big",
        ANON,
        json!([{"event": "*", "schema": "public", "table": "pc_big"}]),
    )
    .await;
    ws.subscribed().await;
    let big = "x".repeat(2 * 1024 * 1024);
    c.execute("INSERT INTO pc_big VALUES (1, 'tiny', $1)", &[&big])
        .await
        .unwrap();
    let (_, data) = ws.change(WAIT).await.expect("2 MB insert");
    assert_eq!(data["errors"], json!(["Error 413: Payload Too Large"]));
    assert_eq!(data["record"], json!({"id": 1, "small": "tiny"}));
    assert_eq!(data["columns"].as_array().unwrap().len(), 3);
    // an ordinary row after it is normal again
    c.execute("INSERT INTO pc_big VALUES (2, 'a', 'b')", &[])
        .await
        .unwrap();
    let (_, data) = ws.change(WAIT).await.expect("small insert");
    assert_eq!(data["errors"], Value::Null);
    assert_eq!(data["record"], json!({"id": 2, "small": "a", "big": "b"}));
    drop(srv);
    drop_slot(&c, "slot_big").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_committed_while_server_down_is_delivered() {
    let Some(url) = require_db("change_committed_while_server_down_is_delivered") else {
        return;
    };
    let c = db(&url).await;
    prepare(
        &c,
        "down",
        "DROP TABLE IF EXISTS pc_down; CREATE TABLE pc_down (id int PRIMARY KEY, v text); GRANT SELECT ON pc_down TO PUBLIC;",
        &["pc_down"],
    )
    .await;
    let port = free_port();
    let b = json!([{"event": "INSERT", "schema": "public", "table": "pc_down"}]);
    let mut srv = ServerProc::start(Some(&url), "down", &[], 2500, Some(port)).await;
    {
        let mut ws = Ws::connect(&srv.addr).await;
        ws.join("down", ANON, b.clone()).await;
        ws.subscribed().await;
        c.execute("INSERT INTO pc_down VALUES (1, 'before')", &[])
            .await
            .unwrap();
        assert_eq!(
            ws.change(WAIT).await.expect("live insert").1["record"]["v"],
            "before"
        );
    }
    srv.kill();
    c.execute("INSERT INTO pc_down VALUES (2, 'while down')", &[])
        .await
        .unwrap();
    let srv = ServerProc::start(Some(&url), "down", &[], 2500, Some(port)).await;
    let mut ws = Ws::connect(&srv.addr).await;
    ws.join("down", ANON, b.clone()).await;
    ws.subscribed().await;
    let (_, mut data) = ws
        .change(WAIT)
        .await
        .expect("the change committed while the server was down");
    if data["record"]["id"] == 1 {
        // at-least-once: the kill may beat the confirmation of the last delivered change
        eprintln!("note: change 1 was delivered again after the restart");
        data = ws
            .change(WAIT)
            .await
            .expect("the change committed while the server was down")
            .1;
    }
    assert_eq!(data["record"], json!({"id": 2, "v": "while down"}));
    c.execute("INSERT INTO pc_down VALUES (3, 'after')", &[])
        .await
        .unwrap();
    assert_eq!(
        ws.change(WAIT).await.expect("insert after restart").1["record"]["id"],
        3
    );
    drop(srv);
    drop_slot(&c, "slot_down").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_restart_under_live_subscription() {
    // its own cluster: restarting the shared one would disturb the other tests
    if require_db("database_restart_under_live_subscription").is_none() {
        return;
    }
    let env = [
        ("PG_PORT", "54339"),
        ("PG_BASE", "/tmp/supa-realtime-pg-restart-test"),
    ];
    let Some(url) = postgres_sh(&["start"], &env) else {
        panic!("could not start the second cluster with scripts/postgres.sh");
    };
    let c = db(&url).await;
    prepare(
        &c,
        "rst",
        "DROP TABLE IF EXISTS pc_rst; CREATE TABLE pc_rst (id int PRIMARY KEY); GRANT SELECT ON pc_rst TO PUBLIC;",
        &["pc_rst"],
    )
    .await;
    drop(c);
    let srv = ServerProc::start(Some(&url), "rst", &[], 0, None).await;
    let mut ws = Ws::connect(&srv.addr).await;
    ws.join("rst", ANON, json!([{"event": "INSERT", "table": "pc_rst"}]))
        .await;
    ws.subscribed().await;
    postgres_sh(&["restart"], &env).expect("restart the database");
    let (status, msg) = ws
        .system(Duration::from_secs(15))
        .await
        .expect("told that the database went away");
    assert_eq!((status.as_str(), msg.as_str()), ("error", DB_DOWN));
    ws.subscribed().await; // back
    let c = db(&url).await;
    c.execute("INSERT INTO pc_rst VALUES (1)", &[])
        .await
        .unwrap();
    let (_, data) = ws
        .change(WAIT)
        .await
        .expect("insert after the database restart");
    assert_eq!(data["record"], json!({"id": 1}));
    drop(srv);
    drop_slot(&c, "slot_rst").await;
    let _ = postgres_sh(&["stop"], &env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_database_subscribe_gets_error() {
    let srv = ServerProc::start(None, "nodb", &[], 0, None).await;
    let mut ws = Ws::connect(&srv.addr).await;
    ws.join(
        "nodb",
        ANON,
        json!([{"event": "*", "schema": "public", "table": "todos"}]),
    )
    .await;
    let (status, msg) = ws.system(WAIT).await.expect("system error");
    assert_eq!((status.as_str(), msg.as_str()), ("error", DB_DOWN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_token_refresh_switches_claims() {
    let Some(url) = require_db("access_token_refresh_switches_claims") else {
        return;
    };
    let c = db(&url).await;
    prepare(
        &c,
        "tok",
        "DROP TABLE IF EXISTS pc_tok; CREATE TABLE pc_tok (id int PRIMARY KEY, owner uuid);
         ALTER TABLE pc_tok ENABLE ROW LEVEL SECURITY;",
        &["pc_tok"],
    )
    .await;
    let srv = ServerProc::start(Some(&url), "tok", &[], 0, None).await;
    let u1 = "33333333-3333-3333-3333-333333333333";
    let mut ws = Ws::connect(&srv.addr).await;
    ws.join("tok", ANON, json!([{"event": "INSERT", "table": "pc_tok"}]))
        .await;
    ws.subscribed().await;
    c.batch_execute(
        "GRANT SELECT ON pc_tok TO anon, authenticated;
         CREATE POLICY mine ON pc_tok FOR SELECT TO authenticated USING (owner = auth.uid());",
    )
    .await
    .unwrap();
    c.execute("INSERT INTO pc_tok VALUES (1, $1::text::uuid)", &[&u1])
        .await
        .unwrap();
    assert!(
        ws.change(QUIET).await.is_none(),
        "anon must not see the row"
    );
    ws.send(
        "realtime:tok",
        "access_token",
        json!({"access_token": user_token(u1)}),
        Some("1"),
    )
    .await;
    ws.subscribed().await; // re-subscribed with the new claims, as upstream
    c.execute("INSERT INTO pc_tok VALUES (2, $1::text::uuid)", &[&u1])
        .await
        .unwrap();
    let (_, data) = ws
        .change(WAIT)
        .await
        .expect("the owner's row after the token refresh");
    assert_eq!(data["record"]["id"], 2);
    drop(srv);
    drop_slot(&c, "slot_tok").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_drops_slot_and_publication() {
    use supa_realtime_server::postgres::{ChangeFeed, PostgresConfig};
    let Some(url) = require_db("cleanup_drops_slot_and_publication") else {
        return;
    };
    let c = db(&url).await;
    prepare(
        &c,
        "cln",
        "DROP TABLE IF EXISTS pc_cln; CREATE TABLE pc_cln (id int PRIMARY KEY);",
        &["pc_cln"],
    )
    .await;
    let mut srv = ServerProc::start(Some(&url), "cln", &[], 0, None).await;
    let mut ws = Ws::connect(&srv.addr).await;
    ws.join("cln", ANON, json!([{"event": "*", "table": "pc_cln"}]))
        .await;
    ws.subscribed().await;
    let count = |q: &'static str| {
        let c = &c;
        async move { c.query_one(q, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(
        count("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'slot_cln'").await,
        1
    );
    srv.kill();
    let cfg = PostgresConfig {
        slot_name: "slot_cln".into(),
        publication: "pub_cln".into(),
        ..PostgresConfig::new(url.clone())
    };
    ChangeFeed::cleanup(&cfg).await.expect("cleanup");
    assert_eq!(
        count("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'slot_cln'").await,
        0
    );
    assert_eq!(
        count("SELECT count(*) FROM pg_publication WHERE pubname = 'pub_cln'").await,
        0
    );
}
