use std::future::Future;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Polls `f` every 100 ms until it returns `Some`, for at most `timeout`;
/// on timeout an [`Error::NotReady`] naming `what`. The bounded wait tests
/// should use instead of sleeping:
///
/// ```no_run
/// # async fn demo(pods: kube::Api<k8s_openapi::api::core::v1::Pod>) -> squall_testenv::Result<()> {
/// use std::time::Duration;
/// let pod = squall_testenv::wait_until("pod web-0 running", Duration::from_secs(60), || async {
///     let p = pods.get("web-0").await.ok()?;
///     (p.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(p)
/// })
/// .await?;
/// # let _ = pod; Ok(()) }
/// ```
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(Error::NotReady {
                component: what.to_string(),
                timeout,
                detail: "condition never held".into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
