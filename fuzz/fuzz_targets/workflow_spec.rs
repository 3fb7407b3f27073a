//! A workflow spec from arbitrary text, as `floki-agent apply` or a peer's
//! `prepare` would bring it: parsing never panics, and a spec that parses
//! names only known nodes and has every edge between declared functions.
#![no_main]

use std::collections::BTreeSet;

use floki_agent::workflow::Workflow;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let nodes: BTreeSet<String> = ["node-a", "node-b"].map(String::from).into();
    if let Ok(workflow) = Workflow::parse(text, &nodes) {
        for (_, stream) in workflow.streams() {
            for function in [&stream.producer, &stream.consumer] {
                let node = workflow.node_of(function).expect("a stream's functions are placed");
                assert!(nodes.contains(node), "{node} is not a known node");
            }
        }
    }
});
