package sqlite

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cleanroom-ci/cleanroom/coordinator/store"
)

// The explorer's filters on the event's JSON reach the indexes of migration
// 3: a rule filter searches egress_rule, a verdict filter egress_verdict,
// and every one of them holds the domain expression exactly as egressMatch
// writes it, so SQLite tests a domain filter on index entries. A change to
// either side that breaks the match makes the explorer parse every event's
// JSON again (BenchmarkConsoleExplorer1MEvents: seconds, not milliseconds).
func TestExplorerFiltersUseIndexes(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(t.TempDir(), "cleanroom.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	plan := func(verdict string, m store.EgressMatch) string {
		t.Helper()
		where, args := egressMatch(m, nil, nil)
		if verdict != "" {
			where, args = append(where, "verdict = ?"), append(args, verdict)
		}
		rows, err := s.db.QueryContext(ctx, `EXPLAIN QUERY PLAN SELECT event FROM egress WHERE `+strings.Join(where, " AND ")+` ORDER BY time, id LIMIT 201`, args...)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var steps []string
		for rows.Next() {
			var id, parent, unused int
			var detail string
			if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
				t.Fatal(err)
			}
			steps = append(steps, detail)
		}
		return strings.Join(steps, "; ")
	}
	for _, tc := range []struct {
		verdict string
		match   store.EgressMatch
		want    string
	}{
		{"", store.EgressMatch{Rule: "metadata-deny"}, "USING INDEX egress_rule (<expr>=?)"},
		{"", store.EgressMatch{Rule: "dns-refused", Domain: "exfil.example"}, "USING INDEX egress_rule (<expr>=?)"},
		{"deny", store.EgressMatch{Domain: "exfil.example"}, "USING INDEX egress_verdict (verdict=?)"},
		{"", store.EgressMatch{Domain: "exfil.example"}, "USING INDEX egress_time_domain"},
	} {
		if got := plan(tc.verdict, tc.match); !strings.Contains(got, tc.want) {
			t.Errorf("verdict %q %+v: plan %q, want %q", tc.verdict, tc.match, got, tc.want)
		}
	}

	// The domain expression, as egressMatch compares it, in every index.
	where, _ := egressMatch(store.EgressMatch{Domain: "exfil.example"}, nil, nil)
	domainExpr, _, ok := strings.Cut(strings.TrimPrefix(where[0], "("), " = ?")
	if !ok {
		t.Fatalf("unexpected domain condition %q", where[0])
	}
	for _, idx := range []string{"egress_time_domain", "egress_verdict", "egress_rule"} {
		var sqlText string
		if err := s.db.QueryRowContext(ctx, `SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?`, idx).Scan(&sqlText); err != nil {
			t.Fatalf("index %s: %v", idx, err)
		}
		if !strings.Contains(sqlText, domainExpr) {
			t.Errorf("index %s (%s) lacks egressMatch's domain expression %s", idx, sqlText, domainExpr)
		}
	}
}
