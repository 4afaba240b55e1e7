//! Pure cluster state: namespaces, pods and policies, keeping only the fields that matter.
