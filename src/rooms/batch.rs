//! One task per shard that gathers the questions asked while its previous query ran and
//! answers them all with one query: under load the batches grow and the cost per question
//! shrinks towards nothing. Used for reservation-id look-ups ([`super::id_lookup`]) and for
//! reservation-id claims ([`super::claims`]).
//!
//! Every caller waits at most its own timeout: a hung shard answers
//! [`ShardError::Unavailable`] and never holds up a caller beyond that.

use std::time::Duration;

use deadpool_postgres::ClientWrapper;
use tokio::sync::{mpsc, oneshot};

use super::shards::{ShardError, ShardFuture, Shards};

/// Most questions answered by one query.
const MAX_BATCH: usize = 512;

/// Answers a batch of questions on one connection: one answer per question, in order.
pub type Answer<Q, A> = for<'c> fn(&'c ClientWrapper, Vec<Q>) -> ShardFuture<'c, Vec<A>>;

type Reply<A> = oneshot::Sender<Result<A, String>>;

/// A handle to the batching task of one shard; cheap to clone.
pub struct Batcher<Q, A> {
    shard: usize,
    requests: mpsc::Sender<(Q, Reply<A>)>,
}

impl<Q, A> Clone for Batcher<Q, A> {
    fn clone(&self) -> Self {
        Self { shard: self.shard, requests: self.requests.clone() }
    }
}

impl<Q: Send + 'static, A: Send + 'static> Batcher<Q, A> {
    /// Starts the task of every shard (on the current tokio runtime); `what` names the batch in
    /// errors.
    pub fn spawn_all(shards: &Shards, what: &'static str, answer: Answer<Q, A>) -> Vec<Self> {
        (0..shards.len()).map(|shard| Self::spawn(shards.clone(), shard, what, answer)).collect()
    }

    /// Starts the task for shard `shard`.
    pub fn spawn(shards: Shards, shard: usize, what: &'static str, answer: Answer<Q, A>) -> Self {
        let (requests, receiver) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(serve(shards, shard, what, answer, receiver));
        Self { shard, requests }
    }

    /// The shard this task asks.
    pub fn shard(&self) -> usize {
        self.shard
    }

    /// The answer to `question`, within `timeout` (`None`: unbounded).
    pub async fn ask(&self, question: Q, timeout: Option<Duration>) -> Result<A, ShardError> {
        let shard = self.shard;
        let unavailable = |reason: String| ShardError::Unavailable { shard, reason };
        let asked = async {
            let (reply, answer) = oneshot::channel();
            self.requests.send((question, reply)).await.map_err(|_| unavailable("the batch task stopped".into()))?;
            answer.await.map_err(|_| unavailable("the batch task dropped the question".into()))?.map_err(unavailable)
        };
        match timeout {
            Some(limit) => tokio::time::timeout(limit, asked)
                .await
                .map_err(|_| unavailable(format!("no answer within {limit:?}")))?,
            None => asked.await,
        }
    }
}

async fn serve<Q: Send + 'static, A: Send + 'static>(
    shards: Shards,
    shard: usize,
    what: &'static str,
    answer: Answer<Q, A>,
    mut receiver: mpsc::Receiver<(Q, Reply<A>)>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (questions, replies): (Vec<Q>, Vec<Reply<A>>) = batch.drain(..).unzip();
        let asked = questions.len();
        let answered = shards.run(shard, move |client| answer(client, questions)).await;
        match answered {
            Ok(answers) if answers.len() == asked => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(Ok(answer));
                }
            }
            Ok(answers) => {
                let message = format!("{what}: {} answers to {asked} questions", answers.len());
                replies.into_iter().for_each(|reply| drop(reply.send(Err(message.clone()))));
            }
            Err(error) => {
                let message = format!("{what} failed: {error}");
                replies.into_iter().for_each(|reply| drop(reply.send(Err(message.clone()))));
            }
        }
    }
}
