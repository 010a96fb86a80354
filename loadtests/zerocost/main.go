// zerocost: the extender protocol's own ceiling for `make bench-e2e` and `make bench-churn`. It does no
// scheduling work: filter passes every node it is given, prioritize gives every node the same score, and
// bind POSTs the pod's Binding to the API server, as any binding extender must; preempt keeps
// kube-scheduler's candidates. What kube-scheduler
// spends beside it (encoding the arguments, the round trips, waiting on binds) is what no extender can
// remove; Berth's rate is reported as a share of this one's.
//
//	zerocost -addr 127.0.0.1:8080 -server https://127.0.0.1:6443 -token-file token
//
// Standard library only, so it builds in seconds. The API server's certificate is not verified: it runs
// on loopback beside a test control plane whose certificate is self-signed.
package main

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// args is the part of ExtenderArgs this extender reads (nodeCacheCapable: NodeNames; else Nodes.items).
type args struct {
	Nodes *struct {
		Items []struct {
			Metadata struct {
				Name string `json:"name"`
			} `json:"metadata"`
		} `json:"items"`
	} `json:"nodes"`
	NodeNames *[]string `json:"nodenames"`
}

func (a *args) names() []string {
	if a.NodeNames != nil {
		return *a.NodeNames
	}
	out := []string{}
	if a.Nodes != nil {
		for _, n := range a.Nodes.Items {
			out = append(out, n.Metadata.Name)
		}
	}
	return out
}

type bindArgs struct {
	PodName      string `json:"podName"`
	PodNamespace string `json:"podNamespace"`
	PodUID       string `json:"podUID"`
	Node         string `json:"node"`
}

type binder struct {
	server string
	token  string
	client *http.Client
}

func (b *binder) bind(a bindArgs) error {
	body, _ := json.Marshal(map[string]any{
		"apiVersion": "v1",
		"kind":       "Binding",
		"metadata":   map[string]any{"name": a.PodName, "namespace": a.PodNamespace, "uid": a.PodUID},
		"target":     map[string]any{"apiVersion": "v1", "kind": "Node", "name": a.Node},
	})
	u := fmt.Sprintf("%s/api/v1/namespaces/%s/pods/%s/binding", b.server,
		url.PathEscape(a.PodNamespace), url.PathEscape(a.PodName))
	req, err := http.NewRequest(http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+b.token)
	resp, err := b.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	reply, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		return fmt.Errorf("binding %s/%s: %d %s", a.PodNamespace, a.PodName, resp.StatusCode, reply)
	}
	return nil
}

func reply(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := json.NewDecoder(io.LimitReader(r.Body, 64<<20)).Decode(v); err != nil {
		http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
		return false
	}
	return true
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "listen address")
	server := flag.String("server", "", "API server URL, e.g. https://127.0.0.1:6443")
	tokenFile := flag.String("token-file", "", "file holding the bearer token for the API server")
	flag.Parse()
	token, err := os.ReadFile(*tokenFile)
	if err != nil {
		log.Fatal(err)
	}
	b := &binder{
		server: strings.TrimRight(*server, "/"),
		token:  strings.TrimSpace(string(token)),
		client: &http.Client{
			Timeout: 10 * time.Second,
			Transport: &http.Transport{
				TLSClientConfig:     &tls.Config{InsecureSkipVerify: true},
				MaxIdleConnsPerHost: 64,
			},
		},
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
	mux.HandleFunc("POST /scheduler/filter", func(w http.ResponseWriter, r *http.Request) {
		var a args
		if decode(w, r, &a) {
			reply(w, map[string]any{"nodenames": a.names(), "failedNodes": map[string]string{}, "error": ""})
		}
	})
	mux.HandleFunc("POST /scheduler/prioritize", func(w http.ResponseWriter, r *http.Request) {
		var a args
		if !decode(w, r, &a) {
			return
		}
		scores := []map[string]any{}
		for _, n := range a.names() {
			scores = append(scores, map[string]any{"host": n, "score": 0})
		}
		reply(w, scores)
	})
	mux.HandleFunc("POST /scheduler/bind", func(w http.ResponseWriter, r *http.Request) {
		var a bindArgs
		if !decode(w, r, &a) {
			return
		}
		msg := ""
		if err := b.bind(a); err != nil {
			msg = err.Error()
		}
		reply(w, map[string]string{"error": msg})
	})
	// preempt: kube-scheduler's candidates, unchanged (no extender veto, no extra victims).
	mux.HandleFunc("POST /scheduler/preempt", func(w http.ResponseWriter, r *http.Request) {
		var a struct {
			Meta json.RawMessage `json:"nodeNameToMetaVictims"`
		}
		if decode(w, r, &a) {
			reply(w, map[string]json.RawMessage{"nodeNameToMetaVictims": a.Meta})
		}
	})
	log.Fatal(http.ListenAndServe(*addr, mux))
}
