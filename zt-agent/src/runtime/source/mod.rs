//! Where the agent learns about Namespaces, Pods and NetworkPolicies.

pub mod kube;
