//! The README's demo, end to end: the load ramp raises desired replicas of
//! the cheaper variant, removing the load lowers them again, and nothing is
//! left running afterwards.

use std::process::Stdio;
use std::time::Duration;

use wva_e2e::bin;

/// Processes whose environment carries `mark`.
fn processes_marked(mark: &str) -> Vec<u32> {
    let needle = format!("WVA_E2E_MARK={mark}");
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
        })
        .collect()
}

#[tokio::test]
async fn demo_scales_the_cheap_variant_up_under_load_and_back_down() -> anyhow::Result<()> {
    let mark = format!("demo-{}", std::process::id());
    let child = tokio::process::Command::new(bin("wva-aggregator"))
        .args(["--demo", "--demo-speed", "3", "--cold-start", "1s"])
        .args(["--scale-down-stabilization", "3s"])
        .env("WVA_E2E_MARK", &mark)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let output = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output()).await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed: {}\n{stdout}",
        output.status
    );

    let summary = |variant: &str| -> (u32, u32) {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("demo/{variant}: peak desired")))
            .unwrap_or_else(|| panic!("no summary for {variant} in:\n{stdout}"));
        let numbers: Vec<u32> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok())
            .collect();
        (numbers[numbers.len() - 2], numbers[numbers.len() - 1])
    };
    let (cheap_peak, cheap_final) = summary("llama-8b-l4");
    let (_, pricey_final) = summary("llama-8b-h100");
    assert!(
        cheap_peak >= 2,
        "the cheap variant scaled up under load (peak {cheap_peak})\n{stdout}"
    );
    assert_eq!(
        cheap_final, 1,
        "and back down to one after the load\n{stdout}"
    );
    assert_eq!(
        pricey_final, 0,
        "the expensive variant is released first\n{stdout}"
    );
    assert!(stdout.contains("the fleet scaled back down"), "{stdout}");
    assert!(
        stdout.contains("KV %") && stdout.contains("QUEUE"),
        "the live table is shown"
    );
    // A KEDA-shaped client on the external scaler followed every change.
    assert!(stdout.contains("KEDA view: llama-8b-h100"), "{stdout}");
    let lag: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("KEDA external scaler: every change seen within "))
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no KEDA summary in:\n{stdout}"));
    assert!(lag <= 1000, "KEDA saw a change {lag} ms after its decision");

    assert_eq!(
        processes_marked(&mark),
        Vec::<u32>::new(),
        "the demo left child processes behind"
    );
    Ok(())
}
