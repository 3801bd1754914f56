// A word-count bolt written with storm.js: counts words and emits [word, count].
var storm = require('storm');
var BasicBolt = storm.BasicBolt;

function WordCountBolt() {
    BasicBolt.call(this);
    this.counts = {};
}
WordCountBolt.prototype = Object.create(BasicBolt.prototype);
WordCountBolt.prototype.constructor = WordCountBolt;

WordCountBolt.prototype.process = function (tup, done) {
    var word = tup.values[0];
    this.counts[word] = (this.counts[word] || 0) + 1;
    this.emit({tuple: [word, this.counts[word]], anchorTupleId: tup.id}, function () {
        done();
    });
};

new WordCountBolt().run();
