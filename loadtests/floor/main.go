// floor: the machine's own floor for `berth bench`. It answers every request with a stored reply (the
// bytes Berth sent for the same case), so what it costs is what the kernel, the loopback and wrk cost
// for a request and a reply of those sizes on the same core: Berth's excess over it is Berth's own.
//
//	floor -addr 127.0.0.1:8080 -manifest replies.txt
//
// Each manifest line is `PATH LENGTH FILE`: the reply (a whole HTTP response) for a POST to PATH with a
// body of LENGTH bytes; LENGTH -1 matches any body. Standard library only, so it builds in seconds.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"strconv"
	"strings"
)

type key struct {
	path   string
	length int
}

func load(manifest string) (map[key][]byte, error) {
	text, err := os.ReadFile(manifest)
	if err != nil {
		return nil, err
	}
	replies := map[key][]byte{}
	for _, line := range strings.Split(strings.TrimSpace(string(text)), "\n") {
		var path, file string
		var length int
		if _, err := fmt.Sscan(line, &path, &length, &file); err != nil {
			return nil, fmt.Errorf("manifest line %q: %v", line, err)
		}
		if replies[key{path, length}], err = os.ReadFile(file); err != nil {
			return nil, err
		}
	}
	return replies, nil
}

var notFound = []byte("HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")

func serve(conn net.Conn, replies map[key][]byte) {
	defer conn.Close()
	in := bufio.NewReaderSize(conn, 64<<10)
	for {
		first, err := in.ReadString('\n')
		if err != nil {
			return
		}
		parts := strings.Fields(first)
		if len(parts) != 3 {
			return
		}
		length, closing := 0, false
		for {
			line, err := in.ReadString('\n')
			if err != nil {
				return
			}
			line = strings.TrimRight(line, "\r\n")
			if line == "" {
				break
			}
			name, value, _ := strings.Cut(line, ":")
			value = strings.TrimSpace(value)
			switch strings.ToLower(name) {
			case "content-length":
				length, _ = strconv.Atoi(value)
			case "connection":
				closing = strings.EqualFold(value, "close")
			}
		}
		if _, err := io.CopyN(io.Discard, in, int64(length)); err != nil {
			return
		}
		path, _, _ := strings.Cut(parts[1], "?")
		reply, ok := replies[key{path, length}]
		if !ok {
			if reply, ok = replies[key{path, -1}]; !ok {
				reply = notFound
			}
		}
		if _, err := conn.Write(reply); err != nil || closing {
			return
		}
	}
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "listen address")
	manifest := flag.String("manifest", "replies.txt", "PATH LENGTH FILE per line")
	flag.Parse()
	replies, err := load(*manifest)
	if err != nil {
		log.Fatal(err)
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	for {
		conn, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go serve(conn, replies)
	}
}
