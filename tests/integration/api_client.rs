//! The client microgate talks to the API server with, over connections that go silent.

use std::{net::SocketAddr, time::Duration};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, config::Kubeconfig};
use microgate_test_support::{cluster, proxy::CuttableProxy, with_namespace};

/// Short, so that the test does not wait long for the request it expects to be given up.
const HEAD_TIMEOUT: Duration = Duration::from_secs(2);

#[tokio::test]
async fn a_request_over_a_pooled_connection_gone_silent_is_given_up_and_the_next_one_answered() {
    with_namespace("client-silent", |ns| async move {
        let api_port = cluster::state().await.expect("the cluster's state").api_port;
        let proxy = CuttableProxy::start(SocketAddr::from(([127, 0, 0, 1], api_port)))
            .await
            .expect("start the proxy");
        let kubeconfig = cluster::kubeconfig_for(proxy.addr()).expect("a kubeconfig through the proxy");
        let kubeconfig = Kubeconfig::read_from(&kubeconfig).expect("read the kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("a client configuration");
        let client = microgate::watch::client_with_head_timeout(config, HEAD_TIMEOUT).expect("a client");
        let config_maps: Api<ConfigMap> = Api::namespaced(client, &ns.name);

        config_maps
            .list(&Default::default())
            .await
            .expect("a list through the proxy");
        // Let that list's connection go back to the client's pool, then silence it there: the
        // next request goes out over it, as a watch reopened after a silence does.
        tokio::time::sleep(Duration::from_millis(500)).await;
        proxy.silence();
        let silenced = tokio::time::timeout(Duration::from_secs(60), config_maps.list(&Default::default()))
            .await
            .expect("the request over the silenced connection ends instead of waiting for ever");
        match silenced {
            Err(kube::Error::Service(error)) => assert!(
                error.is::<tower::timeout::error::Elapsed>(),
                "given up for another reason: {error}"
            ),
            other => panic!("no answer can come over a silenced connection, yet: {other:?}"),
        }

        // The given-up connection was closed, not pooled: the next request draws a new one.
        let answered = config_maps
            .list(&Default::default())
            .await
            .expect("the next request is answered");
        assert!(answered.items.is_empty(), "{answered:?}");
    })
    .await;
}
