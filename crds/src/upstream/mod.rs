//! The upstream Kubernetes Network Policy API types Palisade reads
//! (kubernetes-sigs/network-policy-api). Not ours to install: serde + schemars types with a
//! `kube::Resource` implementation so the operator can watch them. The standard
//! `NetworkPolicy` comes from `k8s_openapi::api::networking::v1`.

pub mod v1alpha1;
pub mod v1alpha2;
