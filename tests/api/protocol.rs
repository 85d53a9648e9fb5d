//! The gRPC surface itself: health, reflection, undecodable and oversized messages, and the
//! RPCs that later versions implement.
use dsr::api::pb;
use tonic::{
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    Code, Status,
};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

use crate::helpers::*;

#[tokio::test]
async fn health_answers_without_credentials_for_the_server_and_each_service() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut health = HealthClient::new(channel(app.addr).await);
    for service in ["", "dsr.v1.DataSubjectRights", "dsr.v1.Audit", "dsr.v1.Holds"] {
        let r = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn reflection_lists_the_services_in_v1_and_v1alpha() {
    use tonic_reflection::pb::{v1, v1alpha};
    let app = spawn_app(Backend::Sqlite).await;
    let ch = channel(app.addr).await;
    let mut v1c = v1::server_reflection_client::ServerReflectionClient::new(ch.clone());
    let req = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut stream = v1c.server_reflection_info(futures::stream::iter([req])).await.unwrap().into_inner();
    let msg = stream.message().await.unwrap().unwrap();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        msg.message_response
    else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for service in ["dsr.v1.DataSubjectRights", "dsr.v1.Audit", "dsr.v1.Holds"] {
        assert!(names.contains(&service), "{names:?}");
    }

    let mut alpha = v1alpha::server_reflection_client::ServerReflectionClient::new(ch);
    let req = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut stream = alpha.server_reflection_info(futures::stream::iter([req])).await.unwrap().into_inner();
    assert!(stream.message().await.unwrap().is_some());
    app.shutdown().await;
}

/// Sends raw bytes as a request body.
#[derive(Default)]
struct RawCodec;
struct RawEncoder;
struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

async fn raw_call(app: &TestApp, method: &str, body: Vec<u8>) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel(app.addr).await);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_str(&format!("/dsr.v1.DataSubjectRights/{method}")).unwrap();
    grpc.unary(tonic::Request::new(body), path, RawCodec).await.map(|r| r.into_inner())
}

use std::str::FromStr;

#[tokio::test]
async fn an_undecodable_message_is_invalid_argument_and_the_server_stays_up() {
    let app = spawn_app(Backend::Sqlite).await;
    for garbage in [
        vec![0xff, 0xff, 0xff, 0xff, 0x0f],
        vec![0x0a, 0x05, 0x01],
        b"\x12\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01".to_vec(),
    ] {
        let err = raw_call(&app, "SubmitDeletion", garbage).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    }
    assert_eq!(app.count("dsr_requests").await, 0);
    let mut c = app.client.clone();
    c.list_requests(pb::ListRequestsRequest::default()).await.expect("still serving");
    app.shutdown().await;
}

#[tokio::test]
async fn a_message_over_the_size_limit_is_resource_exhausted() {
    let app = spawn_app_with(
        Backend::Sqlite,
        &format!("{TEST_CONFIG}\n[server]\nmax_message_bytes = 4096\n"),
        Default::default(),
    )
    .await;
    let mut c = app.client.clone();
    let req = pb::SubmitDeletionRequest {
        subject: Some(by_phone("acme", "+14155550100")),
        requested_by: "x".repeat(10_000),
        ..Default::default()
    };
    let err = c.submit_deletion(req).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(app.count("dsr_requests").await, 0);
    app.shutdown().await;
}

#[tokio::test]
async fn a_new_services_empty_audit_log_verifies() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut audit = pb::audit_client::AuditClient::new(channel(app.addr).await);
    let v = audit.verify_audit_log(pb::VerifyAuditLogRequest {}).await.unwrap().into_inner();
    assert_eq!((v.ok, v.events_checked, v.first_bad_event), (true, 0, 0));
    app.shutdown().await;
}
