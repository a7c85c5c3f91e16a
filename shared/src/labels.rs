//! Well-known Node labels spotkube reads (set by EKS, Karpenter and the kubelet), the
//! taint key EKS puts on Fargate nodes, and the one label spotkube writes.

/// Karpenter's capacity type label: `spot` / `on-demand`.
pub const KARPENTER_CAPACITY_TYPE: &str = "karpenter.sh/capacity-type";
/// EKS managed node groups' capacity type label: `SPOT` / `ON_DEMAND`.
pub const EKS_CAPACITY_TYPE: &str = "eks.amazonaws.com/capacityType";
/// EKS compute type: `fargate` on Fargate nodes (also the node selector that routes a
/// pod to a Fargate profile).
pub const EKS_COMPUTE_TYPE: &str = "eks.amazonaws.com/compute-type";
/// The value of [`EKS_COMPUTE_TYPE`] on Fargate nodes.
pub const FARGATE: &str = "fargate";
/// The EC2 instance type, e.g. `m5.large`.
pub const INSTANCE_TYPE: &str = "node.kubernetes.io/instance-type";
/// The availability zone, e.g. `us-east-1a`.
pub const ZONE: &str = "topology.kubernetes.io/zone";
/// The region, e.g. `us-east-1`.
pub const REGION: &str = "topology.kubernetes.io/region";
/// The node's hostname (per-node topology key).
pub const HOSTNAME: &str = "kubernetes.io/hostname";

/// Capacity type labels, in the order they are consulted (a configured label comes first).
pub const CAPACITY_TYPE_LABELS: &[&str] = &[KARPENTER_CAPACITY_TYPE, EKS_CAPACITY_TYPE];

/// Set by spotkube on a Deployment while a scaled surge is in progress (value
/// [`SURGING_VALUE`]), in the same write as `spotkube.io/surge-from`, and removed when
/// the surge ends. Annotations cannot be selected on; this label lets the controller
/// watch only the Deployments it has to scale back.
pub const SURGING: &str = "spotkube.io/surging";
/// The value of [`SURGING`].
pub const SURGING_VALUE: &str = "true";

/// Set by spotkube on a Deployment it moved to Fargate (value [`FARGATE_WORKLOAD_VALUE`])
/// for as long as it is there or on its way back (states `fargate`, `recovering`): the
/// recovery loop watches only those.
pub const FARGATE_WORKLOAD: &str = "spotkube.io/on-fargate";
/// The value of [`FARGATE_WORKLOAD`].
pub const FARGATE_WORKLOAD_VALUE: &str = "true";
