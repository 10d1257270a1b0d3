//! Protocol hot paths: frame encoding and client-message parsing by payload size, and signature
//! verification (channel auth, REST request signing).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringcast_protocol::{
    encode_client_frame_into, parse_client_message, pusher, ws, ChannelName, Dialect, FrameDecoder,
    Role,
};

const SIZES: [usize; 4] = [16, 100, 1024, 8192];

fn frame_encoding(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_encode");
    for size in SIZES {
        let data = "x".repeat(size);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("event_frame", size), &data, |b, d| {
            b.iter(|| pusher::event_frame("my-event", "my-channel", black_box(d), None))
        });
        g.bench_with_input(BenchmarkId::new("text_frame", size), &data, |b, d| {
            b.iter(|| ws::text_frame(black_box(d.as_bytes())))
        });
    }
    g.finish();
}

fn client_event_text(size: usize) -> Vec<u8> {
    format!(
        "{{\"event\":\"client-typing\",\"channel\":\"private-room\",\"data\":{{\"text\":\"{}\"}}}}",
        "x".repeat(size)
    )
    .into_bytes()
}

fn message_parsing(c: &mut Criterion) {
    let mut g = c.benchmark_group("client_message_parse");
    for size in SIZES {
        let text = client_event_text(size);
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("parse_client_event", size),
            &text,
            |b, t| {
                b.iter(|| black_box(parse_client_message(Dialect::Pusher, black_box(t)).is_ok()))
            },
        );
        // The whole inbound path: masked frame bytes -> decoder -> message -> parse.
        let mut wire = Vec::new();
        encode_client_frame_into(ws::OpCode::Text, &text, [1, 2, 3, 4], &mut wire);
        g.bench_with_input(BenchmarkId::new("decode_and_parse", size), &wire, |b, w| {
            let mut dec = FrameDecoder::new(Role::Server, 1 << 20);
            b.iter(|| {
                dec.handle_bytes(black_box(w));
                let Ok(Some(ringcast_protocol::Message::Text(t))) = dec.poll_message() else {
                    panic!("one text message");
                };
                black_box(parse_client_message(Dialect::Pusher, &t).is_ok())
            })
        });
    }
    g.finish();
    let mut g = c.benchmark_group("client_message_parse_control");
    let sub = br#"{"event":"pusher:subscribe","data":{"auth":"app-key:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef","channel":"private-room"}}"#.to_vec();
    g.bench_function("parse_subscribe", |b| {
        b.iter(|| black_box(parse_client_message(Dialect::Pusher, black_box(&sub)).is_ok()))
    });
    g.finish();
}

fn signatures(c: &mut Criterion) {
    let mut g = c.benchmark_group("signature");
    let (key, secret) = ("app-key", "app-secret");
    let secrets = vec![secret.to_string()];
    let sid = "1234.5678";
    let private = ChannelName::parse("private-room").expect("valid name");
    let auth = ringcast_protocol::channel_auth(key, secret, sid, private.as_str(), None);
    g.bench_function("verify_private_channel_auth", |b| {
        b.iter(|| {
            ringcast_protocol::verify_channel_auth(
                key,
                &secrets,
                sid,
                &private,
                None,
                Some(black_box(&auth)),
            )
        })
    });
    let presence = ChannelName::parse("presence-room").expect("valid name");
    let cd = r#"{"user_id":"42","user_info":{"name":"Ada"}}"#;
    let pauth = ringcast_protocol::channel_auth(key, secret, sid, presence.as_str(), Some(cd));
    g.bench_function("verify_presence_channel_auth", |b| {
        b.iter(|| {
            ringcast_protocol::verify_channel_auth(
                key,
                &secrets,
                sid,
                &presence,
                Some(cd),
                Some(black_box(&pauth)),
            )
        })
    });
    let body = br#"{"name":"my-event","channels":["my-channel"],"data":"{\"hello\":\"world\"}"}"#;
    let ts = 1_700_000_000;
    let query =
        ringcast_protocol::sign_rest(key, secret, "POST", "/apps/app-id/events", &[], body, ts);
    g.bench_function("verify_rest_trigger", |b| {
        b.iter(|| {
            ringcast_protocol::verify_rest(
                "POST",
                "/apps/app-id/events",
                black_box(&query),
                body,
                ts,
                |k| (k == key).then_some(secrets.as_slice()),
            )
        })
    });
    g.bench_function("sign_rest_trigger", |b| {
        b.iter(|| {
            ringcast_protocol::sign_rest(
                key,
                secret,
                "POST",
                "/apps/app-id/events",
                &[],
                black_box(body),
                ts,
            )
        })
    });
    g.finish();
}

criterion_group!(benches, frame_encoding, message_parsing, signatures);
criterion_main!(benches);
