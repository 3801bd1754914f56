// promcheck does what `promtool check metrics` does, without Prometheus'
// whole server module: it reads Prometheus text exposition on stdin, parses it
// with Prometheus' own parser (expfmt), lints it with promlint, prints each
// problem, and exits 1 on a parse error or any lint problem.
//
// Squall's tests run it on the text of a worker's and the operator's /metrics
// (squall_testenv::promcheck). Built by tests/testenv/provision.sh.
package main

import (
	"fmt"
	"io"
	"os"
	"sort"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

func main() {
	os.Exit(run(os.Stdin, os.Stdout, os.Stderr))
}

func run(in io.Reader, out, errOut io.Writer) int {
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(in)
	if err != nil {
		fmt.Fprintln(errOut, "error while parsing:", err)
		return 1
	}
	names := make([]string, 0, len(families))
	for name := range families {
		names = append(names, name)
	}
	sort.Strings(names)
	mfs := make([]*dto.MetricFamily, 0, len(names))
	for _, name := range names {
		mfs = append(mfs, families[name])
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		fmt.Fprintln(errOut, "error while linting:", err)
		return 1
	}
	for _, p := range problems {
		fmt.Fprintln(errOut, p.Metric, p.Text)
	}
	if len(problems) > 0 {
		return 1
	}
	fmt.Fprintf(out, "ok: %d metric families\n", len(mfs))
	return 0
}
