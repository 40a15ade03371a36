//! Registering a role's Prometheus metrics: one line per metric.

/// Registers each `"name", "help", metric;` line in `registry` (a
/// `&mut prometheus_client::registry::Registry`), cloning the metric handle, so every role
/// declares its metrics as one table:
///
/// ```
/// use prometheus_client::metrics::counter::Counter;
/// let (mut registry, acks) = (prometheus_client::registry::Registry::default(), Counter::<u64>::default());
/// let r = &mut registry;
/// chatfabric_nats::register_metrics!(r;
///     "acks", "Sends acknowledged", acks;
/// );
/// ```
#[macro_export]
macro_rules! register_metrics {
    ($registry:expr; $($name:literal, $help:literal, $metric:expr;)+) => {
        $( $registry.register($name, $help, $metric.clone()); )+
    };
}
