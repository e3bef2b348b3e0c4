// Command mqttpeek prints the retained messages of an MQTT topic filter and
// exits: the demo uses it to show what labsync publishes.
//
//	go run ./testdata/mqttpeek tcp://127.0.0.1:1883 'labsync/#'
package main

import (
	"fmt"
	"os"
	"sort"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: mqttpeek BROKER TOPIC-FILTER")
		os.Exit(2)
	}
	var mu sync.Mutex
	got := map[string]string{}
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(os.Args[1]).SetClientID(fmt.Sprintf("mqttpeek-%d", os.Getpid())))
	if t := c.Connect(); !t.WaitTimeout(10*time.Second) || t.Error() != nil {
		fmt.Fprintln(os.Stderr, "mqttpeek: cannot connect:", t.Error())
		os.Exit(1)
	}
	c.Subscribe(os.Args[2], 1, func(_ mqtt.Client, m mqtt.Message) {
		mu.Lock()
		got[m.Topic()] = string(m.Payload())
		mu.Unlock()
	}).WaitTimeout(10 * time.Second)
	<-time.After(2 * time.Second) // retained messages arrive right after subscribing
	c.Disconnect(100)
	mu.Lock()
	defer mu.Unlock()
	topics := make([]string, 0, len(got))
	for t := range got {
		topics = append(topics, t)
	}
	sort.Strings(topics)
	for _, t := range topics {
		p := got[t]
		if len(p) > 160 {
			p = p[:160] + "…"
		}
		fmt.Printf("%s  %s\n", t, p)
	}
}
