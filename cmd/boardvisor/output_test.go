package main

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

type testRow struct {
	Name   string            `json:"name"`
	Value  string            `json:"value"`
	Count  int               `json:"count"`
	Labels map[string]string `json:"labels,omitempty"`
}

var testColumns = []Column[testRow]{
	{Header: "NAME", Cell: func(r testRow) string { return r.Name }},
	{Header: "VALUE", Cell: func(r testRow) string { return r.Value }},
	{Header: "LABELS", Wide: true, Cell: func(r testRow) string { return labelsCell(r.Labels) }},
}

// Strings YAML would read as other types (true, 123, null, a: b, a leading dash) come
// back as the strings they are.
func TestYAMLKeepsStringsStrings(t *testing.T) {
	rows := []testRow{{Name: "true", Value: "123", Count: 1}, {Name: "null", Value: "a: b", Labels: map[string]string{"k": "- x"}},
		{Name: "multi\nline", Value: "#not a comment"}, {Name: "", Value: "yes"}}
	var y, j bytes.Buffer
	if err := printList(&y, outYAML, rows, testColumns); err != nil {
		t.Fatal(err)
	}
	if err := printList(&j, outJSON, rows, testColumns); err != nil {
		t.Fatal(err)
	}
	var fromYAML, fromJSON []testRow
	if err := yaml.Unmarshal(y.Bytes(), &fromYAML); err != nil {
		t.Fatalf("yaml: %v\n%s", err, y.String())
	}
	if err := json.Unmarshal(j.Bytes(), &fromJSON); err != nil {
		t.Fatal(err)
	}
	// yaml.v3 decodes with the field names lower-cased: the json tags here are those.
	if !reflect.DeepEqual(fromYAML, rows) || !reflect.DeepEqual(fromJSON, rows) {
		t.Errorf("round trip:\nyaml %q -> %+v\njson %+v\nwant %+v", y.String(), fromYAML, fromJSON, rows)
	}
	if strings.Contains(y.String(), "{") {
		t.Errorf("yaml is not in block style:\n%s", y.String())
	}
}

func TestEmptyListsAreLists(t *testing.T) {
	for format, want := range map[string]string{outJSON: "[]\n", outYAML: "[]\n"} {
		var b bytes.Buffer
		if err := printList[testRow](&b, format, nil, testColumns); err != nil || b.String() != want {
			t.Errorf("%s of nothing: %q %v, want %q", format, b.String(), err, want)
		}
	}
}

func TestTablesAndWide(t *testing.T) {
	rows := []testRow{{Name: "rpi4-01", Value: "a\tb\nc", Labels: map[string]string{"device": "rpi4", "arch": "arm64"}}}
	var table, wide bytes.Buffer
	printList(&table, outTable, rows, testColumns)
	printList(&wide, outWide, rows, testColumns)
	if got := table.String(); got != "NAME     VALUE\nrpi4-01  a b c\n" {
		t.Errorf("table:\n%q", got)
	}
	if !strings.Contains(wide.String(), "LABELS") || !strings.Contains(wide.String(), "arch=arm64,device=rpi4") {
		t.Errorf("wide:\n%s", wide.String())
	}
	var one bytes.Buffer
	printOne(&one, outTable, rows[0], testColumns)
	if got := one.String(); got != "name:  rpi4-01\nvalue: a b c\n" {
		t.Errorf("one:\n%q", got)
	}
	if err := (&outputFlag{format: "xml"}).check(); err == nil {
		t.Error("-o xml accepted")
	}
}

func TestTransportReasons(t *testing.T) {
	for msg, want := range map[string]string{
		`connection error: desc = "transport: Error while dialing: dial tcp 127.0.0.1:7400: connect: connection refused"`:             "connection refused (is it running, and listening there?)",
		`connection error: desc = "transport: Error while dialing: dial tcp: lookup nohost on 10.0.0.1:53: no such host"`:             "no such host",
		`connection error: desc = "transport: authentication handshake failed: tls: first record does not look like a TLS handshake"`: "it does not speak TLS (leave out the CA file, or turn TLS on there)",
		`connection error: desc = "error reading server preface: EOF"`:                                                                "it closed the connection (does it want TLS? then set a CA file)",
		`connection error: desc = "transport: authentication handshake failed: x509: certificate signed by unknown authority"`:        "the TLS handshake failed (certificate signed by unknown authority; check the CA file)",
	} {
		if got := transportReason(msg); got != want {
			t.Errorf("transportReason(%q)\n = %q\nwant %q", msg, got, want)
		}
	}
}
