//! The table every scenario adds its rows to.

/// The rows of the final table.
#[derive(Default)]
pub(crate) struct Report {
    pub(crate) rows: Vec<[String; 5]>,
}

impl Report {
    pub(crate) fn row(
        &mut self,
        scenario: &str,
        metric: &str,
        gateway: String,
        baseline: String,
        ratio: String,
    ) {
        self.rows
            .push([scenario.into(), metric.into(), gateway, baseline, ratio]);
    }

    pub(crate) fn markdown(&self) -> String {
        let mut out = String::from(
            "| scenario | metric | Streamgate | baseline | ratio |\n|---|---|---|---|---|\n",
        );
        for r in &self.rows {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                r[0], r[1], r[2], r[3], r[4]
            ));
        }
        out
    }
}
